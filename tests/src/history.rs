//! Histories of client operations and the checker that judges them (pure: no I/O, no clocks).
//!
//! A [`History`] is what the workload clients did: every get, put and delete with its start
//! and end (time since the run began), the node it was sent to, the context it carried and
//! what came back, plus the faults the nemesis injected. A [`FinalState`] is what each replica
//! holds once the cluster has healed and converged. [`check`] judges the pair:
//!
//! 1. **No lost write.** Every acknowledged put's value is either among the key's final values
//!    or *superseded*: some put or delete carried the context of a get that returned the
//!    value (that write covered it). Writes that failed or timed out count as possibly applied:
//!    they may supersede, but their own values need not survive. Only a write the node
//!    rejected outright (invalid, over a limit: nothing written) supersedes nothing.
//! 2. **No resurrection.** A value covered by an *acknowledged* write's context never comes
//!    back in the final state (the covering write is durable on W replicas, and a merge with
//!    it drops the covered value).
//! 3. **Convergence.** After healing, every replica of a key holds the same clock.
//! 4. **No phantom.** No read during the run and no final value shows a value that was never
//!    written to that key, was written only after the read ended, or was rejected.
//!
//! Values are unique strings (a value identifies its write), which is what makes 1, 2 and 4
//! decidable from the outside. A failed check prints a minimal account: the key, the
//! operations involved with their times and results, the faults active meanwhile, and what
//! each replica holds.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::{self, Write as _};
use std::time::Duration;

use dynamo_node::version::{Clock, Value};

/// Index of an operation in [`History::ops`].
pub type OpId = usize;

/// What a client asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// A get; a later put or delete may carry its context.
    Get,
    /// A put of `value` (unique in the history). `context` is the get whose context the put
    /// carried (read-modify-write), `None` for a blind write (empty context).
    Put { value: String, context: Option<OpId> },
    /// A delete carrying the context of the get `context`.
    Delete { context: OpId },
}

/// Why an operation failed, as far as the client can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Failure {
    /// The coordinator did not get R replies or W acknowledgements in time. A write may have
    /// reached some replicas.
    Quorum,
    /// No replica could coordinate a forwarded write (it may have been applied by one that
    /// timed out).
    Unavailable,
    /// The client gave up waiting; anything may have happened.
    Timeout,
    /// The client could not talk to the node (refused, reset). A reset mid-request may come
    /// after the write was applied.
    Unreachable,
    /// The node refused the request before writing anything (invalid argument, too many
    /// siblings, object too large): certainly not applied.
    Rejected,
    /// Any other error; treated as possibly applied.
    Other,
}

impl Failure {
    /// Every failure kind, in display order.
    pub const ALL: [Failure; 6] = [
        Failure::Quorum,
        Failure::Unavailable,
        Failure::Timeout,
        Failure::Unreachable,
        Failure::Rejected,
        Failure::Other,
    ];

    /// Whether a write that failed this way may nonetheless have been applied somewhere.
    pub fn may_have_applied(self) -> bool {
        self != Failure::Rejected
    }

    /// Short name for tables and accounts.
    pub fn name(self) -> &'static str {
        match self {
            Failure::Quorum => "quorum",
            Failure::Unavailable => "unavailable",
            Failure::Timeout => "timeout",
            Failure::Unreachable => "unreachable",
            Failure::Rejected => "rejected",
            Failure::Other => "other",
        }
    }
}

/// How an operation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A get that answered, with the live values it returned.
    Read(Vec<String>),
    /// A put or delete acknowledged by the write quorum.
    Acked,
    /// The operation failed; `message` is the error's text.
    Failed { failure: Failure, message: String },
}

/// One client operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    /// Position in the history (set by [`History::push`]).
    pub id: OpId,
    /// Who issued it ("c3", "converge"): operations of one client never overlap.
    pub client: String,
    /// The node the request was sent to (its coordinator, or the node that forwarded it).
    pub node: String,
    /// The key read or written.
    pub key: String,
    /// What was asked.
    pub action: Action,
    /// When the request was sent, since the run began.
    pub start: Duration,
    /// When the answer (or the error) arrived.
    pub end: Duration,
    /// What came back.
    pub outcome: Outcome,
}

impl Op {
    /// A put or delete.
    pub fn is_write(&self) -> bool {
        !matches!(self.action, Action::Get)
    }

    /// A write that was acknowledged, or that failed in a way that may have applied it.
    pub fn may_have_applied(&self) -> bool {
        match &self.outcome {
            Outcome::Acked => true,
            Outcome::Failed { failure, .. } => failure.may_have_applied(),
            Outcome::Read(_) => false,
        }
    }

    /// The context the write carried, if any: the get it came from.
    pub fn context(&self) -> Option<OpId> {
        match self.action {
            Action::Get | Action::Put { context: None, .. } => None,
            Action::Put { context: Some(g), .. } | Action::Delete { context: g } => Some(g),
        }
    }

    /// Row label for the statistics table.
    pub fn kind(&self) -> &'static str {
        match self.action {
            Action::Get => "get",
            Action::Put { context: Some(_), .. } => "put (context)",
            Action::Put { context: None, .. } => "put (blind)",
            Action::Delete { .. } => "delete",
        }
    }
}

/// A fault the nemesis injected, and when it was repaired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// What kind ("kill", "pause", "partition", "wipe"): the statistics group by it.
    pub kind: String,
    /// Readable description ("pause node-2", "partition [node-1 node-2] | [node-3]").
    pub what: String,
    /// When it was injected, since the run began.
    pub start: Duration,
    /// When it was repaired; `None` while still active.
    pub end: Option<Duration>,
}

/// Every operation and fault of a run, in completion order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    /// Client operations; `ops[i].id == i`.
    pub ops: Vec<Op>,
    /// Faults, in the order they were injected.
    pub faults: Vec<Fault>,
}

impl History {
    /// An empty history.
    pub fn new() -> History {
        History::default()
    }

    /// Appends an operation, giving it the next id (whatever `op.id` held).
    pub fn push(&mut self, mut op: Op) -> OpId {
        op.id = self.ops.len();
        self.ops.push(op);
        self.ops.len() - 1
    }

    /// Every key an operation touched, sorted.
    pub fn keys(&self) -> BTreeSet<String> {
        self.ops.iter().map(|o| o.key.clone()).collect()
    }
}

/// What one replica holds for a key, read directly (no quorum, no repair).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaState {
    /// The node's id.
    pub node: String,
    /// Its clock, or why it could not be read.
    pub clock: Result<Clock, String>,
}

/// The replicas of every key after healing and convergence.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FinalState {
    /// Key -> each of its N replicas.
    pub keys: BTreeMap<String, Vec<ReplicaState>>,
    /// What did not settle while converging (hints never delivered, replicas still apart),
    /// shown with the violations it may explain.
    pub notes: Vec<String>,
}

impl FinalState {
    /// The live values of a key: those of all readable replicas merged (what a read of every
    /// replica would return). Values that are not UTF-8 are shown lossily (and will not match
    /// any written value).
    pub fn values(&self, key: &str) -> BTreeSet<String> {
        let merged = self
            .keys
            .get(key)
            .into_iter()
            .flatten()
            .filter_map(|r| r.clock.as_ref().ok())
            .fold(Clock::new(), |acc, c| acc.sync(c));
        merged.live_values().into_iter().map(|v| String::from_utf8_lossy(v).into_owned()).collect()
    }
}

/// Why a value seen by a read (or in the final state) should not be there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PhantomReason {
    /// No operation ever wrote it.
    NeverWritten,
    /// It was written, to another key (this op).
    OtherKey(OpId),
    /// Its write (this op) started only after the read had ended.
    FromTheFuture(OpId),
    /// Its write (this op) was rejected by the node: nothing should have been written.
    Rejected(OpId),
}

/// One broken property, with what is needed to explain it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// An acknowledged put whose value is neither in the final state nor covered by any
    /// write's context.
    LostWrite { key: String, value: String, write: OpId },
    /// A value covered by an acknowledged write's context is back in the final state.
    Resurrected { key: String, value: String, covered_by: OpId },
    /// A value that should not exist showed up. `seen_in` is the first read that returned it
    /// (`None`: only the final state holds it); `reads` counts the reads that returned it.
    Phantom {
        key: String,
        value: String,
        seen_in: Option<OpId>,
        reads: usize,
        reason: PhantomReason,
    },
    /// The replicas of a key hold different clocks after convergence.
    Diverged { key: String },
    /// A replica of the key could not be read for the final state.
    ReplicaUnreadable { key: String, node: String, error: String },
    /// The history itself is inconsistent (a bug in the workload, not in the store).
    BadHistory { problem: String },
}

/// Counts of operations by kind and outcome, and of faults by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Kind ("get", "put (context)", ...) -> counts.
    pub by_kind: BTreeMap<&'static str, KindCounts>,
    /// Fault kind -> how many were injected.
    pub faults: BTreeMap<String, usize>,
    /// Keys in the final state.
    pub keys: usize,
    /// Distinct values live in the final state, over all keys.
    pub final_values: usize,
    /// The first error message seen for each kind of failure, to tell what "other" was.
    pub examples: BTreeMap<Failure, String>,
}

/// Counts for one kind of operation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KindCounts {
    /// Operations of this kind.
    pub total: usize,
    /// Answered gets, acknowledged writes.
    pub ok: usize,
    /// Failed ones, by why.
    pub failed: BTreeMap<Failure, usize>,
}

impl Stats {
    /// Counts the operations and faults of a history.
    pub fn of(history: &History, final_state: &FinalState) -> Stats {
        let mut stats = Stats::default();
        for op in &history.ops {
            let counts = stats.by_kind.entry(op.kind()).or_default();
            counts.total += 1;
            match &op.outcome {
                Outcome::Read(_) | Outcome::Acked => counts.ok += 1,
                Outcome::Failed { failure, message } => {
                    *counts.failed.entry(*failure).or_default() += 1;
                    stats.examples.entry(*failure).or_insert_with(|| message.clone());
                }
            }
        }
        for f in &history.faults {
            *stats.faults.entry(f.kind.clone()).or_default() += 1;
        }
        stats.keys = final_state.keys.len();
        stats.final_values = final_state.keys.keys().map(|k| final_state.values(k).len()).sum();
        stats
    }

    /// All operations.
    pub fn total(&self) -> usize {
        self.by_kind.values().map(|c| c.total).sum()
    }

    /// Answered gets plus acknowledged writes.
    pub fn ok(&self) -> usize {
        self.by_kind.values().map(|c| c.ok).sum()
    }

    /// Acknowledged puts and deletes.
    pub fn acked_writes(&self) -> usize {
        self.by_kind.iter().filter(|(k, _)| **k != "get").map(|(_, c)| c.ok).sum()
    }

    /// Operations that failed this way, over all kinds.
    pub fn failed(&self, failure: Failure) -> usize {
        self.by_kind.values().map(|c| c.failed.get(&failure).copied().unwrap_or(0)).sum()
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let failed: usize = Failure::ALL.iter().map(|&x| self.failed(x)).sum();
        writeln!(
            f,
            "operations: {} ({} ok, {} acknowledged writes, {} failed, {} with quorum errors)",
            self.total(),
            self.ok(),
            self.acked_writes(),
            failed,
            self.failed(Failure::Quorum)
        )?;
        write!(f, "  {:<14} {:>7} {:>7}", "kind", "total", "ok")?;
        for x in Failure::ALL {
            write!(f, " {:>11}", x.name())?;
        }
        writeln!(f)?;
        for (kind, c) in &self.by_kind {
            write!(f, "  {kind:<14} {:>7} {:>7}", c.total, c.ok)?;
            for x in Failure::ALL {
                write!(f, " {:>11}", c.failed.get(&x).copied().unwrap_or(0))?;
            }
            writeln!(f)?;
        }
        let faults: Vec<String> = self.faults.iter().map(|(k, n)| format!("{n} {k}")).collect();
        writeln!(
            f,
            "faults: {}",
            if faults.is_empty() { "none".into() } else { faults.join(", ") }
        )?;
        for (failure, message) in &self.examples {
            let short: String = message.chars().take(160).collect();
            writeln!(f, "  e.g. {}: {short}", failure.name())?;
        }
        write!(f, "final state: {} keys, {} live values", self.keys, self.final_values)
    }
}

/// The checker's verdict: the violations found, the statistics, and (through `Display`) a
/// readable account of each violation.
pub struct Report<'a> {
    /// The history judged.
    pub history: &'a History,
    /// The final state it was judged against.
    pub final_state: &'a FinalState,
    /// Every broken property; empty when the run is correct.
    pub violations: Vec<Violation>,
    /// Counts for the test output.
    pub stats: Stats,
}

impl Report<'_> {
    /// True when no property is broken.
    pub fn is_ok(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Judges a history against the final state (see the module docs for the properties).
pub fn check<'a>(history: &'a History, final_state: &'a FinalState) -> Report<'a> {
    let ops = &history.ops;
    let mut violations = Vec::new();
    let bad = |problem: String| Violation::BadHistory { problem };

    // Who wrote each value.
    let mut writer: HashMap<&str, OpId> = HashMap::new();
    for op in ops {
        if let Action::Put { value, .. } = &op.action {
            if let Some(first) = writer.insert(value, op.id) {
                violations.push(bad(format!(
                    "value {value:?} is written by #{first} and #{}: values must be unique",
                    op.id
                )));
            }
        }
    }

    // (key, value) -> the writes whose context covered it (only those that may have applied).
    let mut covered: HashMap<(&str, &str), Vec<OpId>> = HashMap::new();
    for op in ops.iter().filter(|o| o.is_write()) {
        let Some(g) = op.context() else { continue };
        let read =
            match ops.get(g) {
                Some(Op {
                    action: Action::Get, outcome: Outcome::Read(values), key, end, ..
                }) if *key == op.key && *end <= op.start => values,
                _ => {
                    violations.push(bad(format!(
                    "#{} carries the context of #{g}, which is not an earlier successful get of \
                     key {}",
                    op.id, op.key
                )));
                    continue;
                }
            };
        if op.may_have_applied() {
            for v in read {
                covered.entry((op.key.as_str(), v.as_str())).or_default().push(op.id);
            }
        }
    }

    let mut finals: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for key in final_state.keys.keys() {
        finals.insert(key, final_state.values(key));
    }
    for key in history.keys() {
        if !final_state.keys.contains_key(&key) {
            violations.push(bad(format!("key {key} is in the history but not in the final state")));
        }
    }
    let empty = BTreeSet::new();
    let final_of = |key: &str| finals.get(key).unwrap_or(&empty);

    // 1. No acknowledged write lost.
    for op in ops {
        if let (Action::Put { value, .. }, Outcome::Acked) = (&op.action, &op.outcome) {
            if !final_of(&op.key).contains(value)
                && !covered.contains_key(&(op.key.as_str(), value.as_str()))
            {
                violations.push(Violation::LostWrite {
                    key: op.key.clone(),
                    value: value.clone(),
                    write: op.id,
                });
            }
        }
    }

    // 2. No resurrection of what an acknowledged write covered.
    let mut resurrected: Vec<Violation> = covered
        .iter()
        .filter(|((key, value), _)| final_of(key).contains(*value))
        .filter_map(|((key, value), by)| {
            let acked = by.iter().copied().find(|&w| ops[w].outcome == Outcome::Acked)?;
            Some(Violation::Resurrected {
                key: key.to_string(),
                value: value.to_string(),
                covered_by: acked,
            })
        })
        .collect();
    resurrected.sort_by_key(|v| match v {
        Violation::Resurrected { covered_by, .. } => *covered_by,
        _ => 0,
    });
    violations.extend(resurrected);

    // 4. No phantom values, in reads (first occurrence per key and value) or the final state.
    let phantom_reason = |key: &str, value: &str, read_end: Option<Duration>| {
        let Some(&w) = writer.get(value) else { return Some(PhantomReason::NeverWritten) };
        let write = &ops[w];
        if write.key != key {
            Some(PhantomReason::OtherKey(w))
        } else if read_end.is_some_and(|end| end < write.start) {
            Some(PhantomReason::FromTheFuture(w))
        } else if matches!(write.outcome, Outcome::Failed { failure: Failure::Rejected, .. }) {
            Some(PhantomReason::Rejected(w))
        } else {
            None
        }
    };
    let mut phantoms: BTreeMap<(&str, &str), (Option<OpId>, usize, PhantomReason)> =
        BTreeMap::new();
    for op in ops {
        let Outcome::Read(values) = &op.outcome else { continue };
        for v in values {
            if let Some(reason) = phantom_reason(&op.key, v, Some(op.end)) {
                let entry = phantoms.entry((op.key.as_str(), v.as_str())).or_insert((
                    Some(op.id),
                    0,
                    reason,
                ));
                entry.1 += 1;
            }
        }
    }
    for (key, values) in &finals {
        for v in values {
            if let Some(reason) = phantom_reason(key, v, None) {
                phantoms.entry((*key, v.as_str())).or_insert((None, 0, reason));
            }
        }
    }
    for ((key, value), (seen_in, reads, reason)) in phantoms {
        violations.push(Violation::Phantom {
            key: key.into(),
            value: value.into(),
            seen_in,
            reads,
            reason,
        });
    }

    // 3. Converged replicas.
    for (key, replicas) in &final_state.keys {
        let mut clocks = Vec::new();
        for r in replicas {
            match &r.clock {
                Ok(c) => clocks.push(c),
                Err(error) => violations.push(Violation::ReplicaUnreadable {
                    key: key.clone(),
                    node: r.node.clone(),
                    error: error.clone(),
                }),
            }
        }
        if clocks.windows(2).any(|w| w[0] != w[1]) {
            violations.push(Violation::Diverged { key: key.clone() });
        }
    }

    let stats = Stats::of(history, final_state);
    Report { history, final_state, violations, stats }
}

/// How many unrelated operations of a key an account shows at most.
const CONTEXT_OPS: usize = 8;

impl Report<'_> {
    /// The account of one violation: what is wrong, the operations involved, the faults that
    /// may explain it, what each replica holds.
    fn account(&self, v: &Violation, out: &mut String) {
        let ops = &self.history.ops;
        let mut involved: Vec<OpId> = Vec::new();
        let mut note = String::new();
        // A loss, a resurrection or a divergence may come from any fault after the first
        // operation involved; the other violations from faults during the operations.
        let mut faults_until_the_end = true;
        let key: Option<&str> = match v {
            Violation::LostWrite { key, value, write } => {
                let _ = write!(
                    out,
                    "LOST WRITE: key {key}: acknowledged value {value:?} (#{write}) is not in the \
                     final state, and no write carried a context that covered it"
                );
                involved.push(*write);
                let reads: Vec<OpId> = self.reads_returning(key, value).collect();
                if reads.len() > CONTEXT_OPS {
                    let _ = writeln!(
                        note,
                        "  ({} more reads returned {value:?})",
                        reads.len() - CONTEXT_OPS
                    );
                }
                let half = CONTEXT_OPS / 2;
                involved.extend(reads.iter().take(half));
                involved.extend(reads.iter().skip(half.max(reads.len().saturating_sub(half))));
                // What happened to the key afterwards, so the reader sees who should have kept it.
                let later: Vec<OpId> = ops
                    .iter()
                    .filter(|o| o.key == *key && o.is_write() && o.start >= ops[*write].start)
                    .filter(|o| o.id != *write)
                    .map(|o| o.id)
                    .collect();
                if later.len() > CONTEXT_OPS {
                    let _ = writeln!(
                        note,
                        "  ({} later writes of the key not shown)",
                        later.len() - CONTEXT_OPS
                    );
                }
                involved.extend(later.into_iter().take(CONTEXT_OPS));
                Some(key)
            }
            Violation::Resurrected { key, value, covered_by } => {
                let _ = write!(
                    out,
                    "RESURRECTED: key {key}: value {value:?} is in the final state although the \
                     acknowledged write #{covered_by} carried a context that covered it"
                );
                involved.extend(writer_of(ops, value));
                involved.extend(ops[*covered_by].context());
                involved.push(*covered_by);
                Some(key)
            }
            Violation::Phantom { key, value, seen_in, reads, reason } => {
                let where_ = match seen_in {
                    Some(r) => format!("returned by #{r} (and {} more reads)", reads - 1),
                    None => "in the final state".into(),
                };
                let why = match reason {
                    PhantomReason::NeverWritten => "no operation ever wrote it".to_string(),
                    PhantomReason::OtherKey(w) => format!("#{w} wrote it to key {}", ops[*w].key),
                    PhantomReason::FromTheFuture(w) => {
                        format!("its write #{w} started after the read had ended")
                    }
                    PhantomReason::Rejected(w) => {
                        format!("its write #{w} was rejected, so nothing was written")
                    }
                };
                let _ = write!(out, "PHANTOM: key {key}: value {value:?} {where_}, but {why}");
                faults_until_the_end = false;
                involved.extend(*seen_in);
                match reason {
                    PhantomReason::NeverWritten => {}
                    PhantomReason::OtherKey(w)
                    | PhantomReason::FromTheFuture(w)
                    | PhantomReason::Rejected(w) => involved.push(*w),
                }
                Some(key)
            }
            Violation::Diverged { key } => {
                let _ = write!(out, "DIVERGED: key {key}: the replicas hold different versions");
                let last: Vec<OpId> = ops
                    .iter()
                    .rev()
                    .filter(|o| o.key == *key)
                    .take(CONTEXT_OPS)
                    .map(|o| o.id)
                    .collect();
                involved.extend(last);
                Some(key)
            }
            Violation::ReplicaUnreadable { key, node, error } => {
                faults_until_the_end = false;
                let _ = write!(
                    out,
                    "UNREADABLE: key {key}: the replica on {node} could not be read: {error}"
                );
                Some(key)
            }
            Violation::BadHistory { problem } => {
                let _ = write!(out, "BAD HISTORY (a bug in the test, not the store): {problem}");
                None
            }
        };
        out.push('\n');
        involved.sort_unstable();
        involved.dedup();
        if !involved.is_empty() {
            out.push_str("  operations:\n");
            for &id in &involved {
                let _ = writeln!(out, "    {}", describe_op(ops, &ops[id]));
            }
        }
        out.push_str(&note);
        if let (Some(first), Some(last)) = (
            involved.iter().map(|&i| ops[i].start).min(),
            involved.iter().map(|&i| ops[i].end).max(),
        ) {
            let last = if faults_until_the_end { Duration::MAX } else { last };
            let active: Vec<&Fault> = self
                .history
                .faults
                .iter()
                .filter(|f| f.start <= last && f.end.is_none_or(|e| e >= first))
                .collect();
            if !active.is_empty() {
                out.push_str(if faults_until_the_end {
                    "  faults from then on:\n"
                } else {
                    "  faults meanwhile:\n"
                });
                for f in active.iter().take(CONTEXT_OPS) {
                    let end = f.end.map_or("(not healed)".to_string(), secs);
                    let _ = writeln!(out, "    [{} - {}] {}", secs(f.start), end, f.what);
                }
                if active.len() > CONTEXT_OPS {
                    let _ = writeln!(out, "    ({} more)", active.len() - CONTEXT_OPS);
                }
            }
        }
        if let Some(key) = key {
            out.push_str("  replicas:\n");
            for r in self.final_state.keys.get(key).into_iter().flatten() {
                let held = match &r.clock {
                    Ok(c) => describe_clock(c),
                    Err(e) => format!("unreadable: {e}"),
                };
                let _ = writeln!(out, "    {}: {held}", r.node);
            }
        }
    }

    /// Successful gets of `key` that returned `value`.
    fn reads_returning<'b>(
        &'b self,
        key: &'b str,
        value: &'b str,
    ) -> impl Iterator<Item = OpId> + 'b {
        self.history
            .ops
            .iter()
            .filter(move |o| {
                o.key == key
                    && matches!(&o.outcome, Outcome::Read(vs) if vs.iter().any(|v| v == value))
            })
            .map(|o| o.id)
    }
}

/// The put that wrote `value`, if any.
fn writer_of(ops: &[Op], value: &str) -> Option<OpId> {
    ops.iter()
        .find(|o| matches!(&o.action, Action::Put { value: v, .. } if v == value))
        .map(|o| o.id)
}

/// Seconds with millisecond precision.
fn secs(d: Duration) -> String {
    format!("{:.3}s", d.as_secs_f64())
}

/// One line per operation: id, times, client, node, what, outcome.
fn describe_op(ops: &[Op], op: &Op) -> String {
    let what = match &op.action {
        Action::Get => format!("get {}", op.key),
        Action::Put { value, context: None } => format!("put {} = {value:?} blind", op.key),
        Action::Put { value, context: Some(g) } => {
            format!("put {} = {value:?} with the context of #{g}{}", op.key, read_values(ops, *g))
        }
        Action::Delete { context } => {
            format!(
                "delete {} with the context of #{context}{}",
                op.key,
                read_values(ops, *context)
            )
        }
    };
    let outcome = match &op.outcome {
        Outcome::Read(values) => format!("returned {}", list(values)),
        Outcome::Acked => "acknowledged".into(),
        Outcome::Failed { failure, message } => {
            let mut m: String = message.chars().take(200).collect();
            if m.len() < message.len() {
                m.push_str("...");
            }
            format!("failed ({}): {m}", failure.name())
        }
    };
    format!(
        "#{:<6} [{} - {}] {} via {}: {what} -> {outcome}",
        op.id,
        secs(op.start),
        secs(op.end),
        op.client,
        op.node
    )
}

/// " (which returned [..])" for a get, empty otherwise.
fn read_values(ops: &[Op], g: OpId) -> String {
    match ops.get(g).map(|o| &o.outcome) {
        Some(Outcome::Read(values)) => format!(" (covering {})", list(values)),
        _ => String::new(),
    }
}

fn list(values: &[String]) -> String {
    format!("[{}]", values.join(", "))
}

/// A replica's clock in one line: its sibling values (tombstones marked) and the context it
/// covers, actors shortened to 8 hex digits.
pub fn describe_clock(clock: &Clock) -> String {
    if clock.is_empty() {
        return "nothing".into();
    }
    let values: Vec<String> = clock
        .values()
        .into_iter()
        .map(|v| match v {
            Value::Data(bytes) => String::from_utf8_lossy(bytes).into_owned(),
            Value::Tombstone => "<tombstone>".into(),
        })
        .collect();
    let seen: Vec<String> = clock
        .context()
        .entries()
        .iter()
        .map(|(actor, n)| format!("{:08x}:{n}", actor >> 32))
        .collect();
    format!("values {} seen {{{}}}", list(&values), seen.join(" "))
}

impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.stats)?;
        if self.violations.is_empty() {
            return write!(f, "checker: every property holds");
        }
        writeln!(f, "checker: {} violations", self.violations.len())?;
        for note in &self.final_state.notes {
            writeln!(f, "  converge: {note}")?;
        }
        for v in &self.violations {
            let mut account = String::new();
            self.account(v, &mut account);
            writeln!(f, "\n{account}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! The checker on hand-made histories: each property caught when broken, not flagged when
    //! the history is legitimate.

    use super::*;
    use dynamo_node::version::VersionVector;

    const A: u64 = 0xaaaa_0000_0000_0001;
    const B: u64 = 0xbbbb_0000_0000_0002;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Builds histories tersely: each op takes 10 ms from its start.
    struct Builder(History);

    impl Builder {
        fn new() -> Self {
            Builder(History::new())
        }

        fn op(&mut self, key: &str, action: Action, start: u64, outcome: Outcome) -> OpId {
            self.0.push(Op {
                id: 0,
                client: "c0".into(),
                node: "node-1".into(),
                key: key.into(),
                action,
                start: ms(start),
                end: ms(start + 10),
                outcome,
            })
        }

        fn get(&mut self, key: &str, start: u64, values: &[&str]) -> OpId {
            let values = values.iter().map(|s| s.to_string()).collect();
            self.op(key, Action::Get, start, Outcome::Read(values))
        }

        fn put(
            &mut self,
            key: &str,
            value: &str,
            ctx: Option<OpId>,
            start: u64,
            outcome: Outcome,
        ) -> OpId {
            self.op(key, Action::Put { value: value.into(), context: ctx }, start, outcome)
        }
    }

    fn failed(failure: Failure) -> Outcome {
        Outcome::Failed {
            failure,
            message: "put failed: 1 of the 2 required replicas answered".into(),
        }
    }

    /// A clock holding `values` as concurrent siblings, written by actor A (one blind write each).
    fn clock_with(values: &[&str]) -> Clock {
        values.iter().fold(Clock::new(), |c, v| {
            c.update(&VersionVector::new(), Value::Data(v.as_bytes().to_vec()), A)
        })
    }

    /// Every one of three replicas holds `clock`.
    fn converged(keys: &[(&str, Clock)]) -> FinalState {
        let mut f = FinalState::default();
        for (key, clock) in keys {
            let replicas = (1..=3)
                .map(|i| ReplicaState { node: format!("node-{i}"), clock: Ok(clock.clone()) })
                .collect();
            f.keys.insert(key.to_string(), replicas);
        }
        f
    }

    fn kinds(report: &Report<'_>) -> Vec<&'static str> {
        report
            .violations
            .iter()
            .map(|v| match v {
                Violation::LostWrite { .. } => "lost",
                Violation::Resurrected { .. } => "resurrected",
                Violation::Phantom { .. } => "phantom",
                Violation::Diverged { .. } => "diverged",
                Violation::ReplicaUnreadable { .. } => "unreadable",
                Violation::BadHistory { .. } => "bad history",
            })
            .collect()
    }

    #[test]
    fn a_surviving_write_passes() {
        let mut b = Builder::new();
        b.put("k", "c0-1", None, 0, Outcome::Acked);
        b.get("k", 20, &["c0-1"]);
        let f = converged(&[("k", clock_with(&["c0-1"]))]);
        let report = check(&b.0, &f);
        assert!(report.is_ok(), "{report}");
        assert_eq!(report.stats.acked_writes(), 1);
        assert!(report.to_string().contains("every property holds"));
    }

    #[test]
    fn a_lost_write_is_caught_and_explained() {
        let mut b = Builder::new();
        let lost = b.put("k", "c0-1", None, 0, Outcome::Acked);
        b.put("k", "c1-1", None, 5, Outcome::Acked);
        b.get("k", 20, &["c0-1", "c1-1"]);
        // A later write that did not carry a context covering c0-1.
        b.put("k", "c2-1", None, 40, Outcome::Acked);
        b.0.faults.push(Fault {
            kind: "kill".into(),
            what: "kill node-2".into(),
            start: ms(3),
            end: Some(ms(30)),
        });
        let f = converged(&[("k", clock_with(&["c1-1", "c2-1"]))]);
        let report = check(&b.0, &f);
        assert_eq!(
            report.violations,
            vec![Violation::LostWrite { key: "k".into(), value: "c0-1".into(), write: lost }]
        );
        let text = report.to_string();
        // `cargo test -p dynamo-tests --lib -- --nocapture lost` shows what a failure prints.
        println!("{text}");
        for needle in [
            "LOST WRITE: key k: acknowledged value \"c0-1\" (#0)",
            "#0      [0.000s - 0.010s] c0 via node-1: put k = \"c0-1\" blind -> acknowledged",
            "get k -> returned [c0-1, c1-1]",
            "put k = \"c2-1\" blind",
            "faults from then on:\n    [0.003s - 0.030s] kill node-2",
            "node-1: values [c2-1, c1-1] seen {aaaa0000:2}",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
    }

    #[test]
    fn a_failed_write_may_be_lost() {
        let mut b = Builder::new();
        b.put("k", "c0-1", None, 0, failed(Failure::Quorum));
        b.put("k", "c0-2", None, 20, failed(Failure::Timeout));
        let f = converged(&[("k", Clock::new())]);
        let report = check(&b.0, &f);
        assert!(report.is_ok(), "{report}");
        assert_eq!(report.stats.failed(Failure::Quorum), 1);
    }

    #[test]
    fn a_write_superseded_through_a_context_is_not_flagged() {
        let mut b = Builder::new();
        b.put("k", "c0-1", None, 0, Outcome::Acked);
        b.put("k", "c1-1", None, 2, Outcome::Acked);
        let g = b.get("k", 20, &["c0-1", "c1-1"]);
        b.put("k", "c2-1", Some(g), 40, Outcome::Acked);
        // c3-1 is blind and concurrent: it stays as a sibling.
        b.put("k", "c3-1", None, 45, Outcome::Acked);
        let f = converged(&[("k", clock_with(&["c2-1", "c3-1"]))]);
        let report = check(&b.0, &f);
        assert!(report.is_ok(), "{report}");
    }

    #[test]
    fn a_write_that_failed_may_still_supersede_and_a_delete_supersedes() {
        let mut b = Builder::new();
        b.put("k", "c0-1", None, 0, Outcome::Acked);
        let g = b.get("k", 20, &["c0-1"]);
        // The put with the context failed, but may have been applied: c0-1 may be gone, and so
        // may the failed value itself.
        b.put("k", "c1-1", Some(g), 40, failed(Failure::Quorum));
        b.put("d", "c0-2", None, 0, Outcome::Acked);
        let g = b.get("d", 20, &["c0-2"]);
        b.op("d", Action::Delete { context: g }, 40, Outcome::Acked);
        let f = converged(&[("k", Clock::new()), ("d", Clock::new())]);
        let report = check(&b.0, &f);
        assert!(report.is_ok(), "{report}");
    }

    #[test]
    fn a_rejected_write_supersedes_nothing_and_must_not_appear() {
        let mut b = Builder::new();
        b.put("k", "c0-1", None, 0, Outcome::Acked);
        let g = b.get("k", 20, &["c0-1"]);
        let rejected = b.put("k", "c1-1", Some(g), 40, failed(Failure::Rejected));
        let f = converged(&[("k", clock_with(&["c1-1"]))]);
        let report = check(&b.0, &f);
        assert_eq!(kinds(&report), ["lost", "phantom"], "{report}");
        assert!(matches!(
            &report.violations[1],
            Violation::Phantom { reason: PhantomReason::Rejected(w), seen_in: None, .. } if *w == rejected
        ));
    }

    #[test]
    fn a_resurrected_value_is_caught() {
        let mut b = Builder::new();
        b.put("k", "c0-1", None, 0, Outcome::Acked);
        let g = b.get("k", 20, &["c0-1"]);
        let by = b.put("k", "c1-1", Some(g), 40, Outcome::Acked);
        let f = converged(&[("k", clock_with(&["c0-1", "c1-1"]))]);
        let report = check(&b.0, &f);
        assert_eq!(
            report.violations,
            vec![Violation::Resurrected { key: "k".into(), value: "c0-1".into(), covered_by: by }]
        );
        assert!(report.to_string().contains("RESURRECTED: key k"), "{report}");
    }

    #[test]
    fn a_phantom_value_is_caught() {
        let mut b = Builder::new();
        b.put("k", "c0-1", None, 0, Outcome::Acked);
        let read = b.get("k", 20, &["c0-1", "ghost"]);
        b.get("k", 30, &["ghost"]);
        // Read from the future: returned before its write even started.
        let early = b.get("j", 40, &["c0-9"]);
        let later = b.put("j", "c0-9", None, 100, Outcome::Acked);
        // Written to another key.
        let other = b.get("j", 200, &["c0-1", "c0-9"]);
        let f = converged(&[("k", clock_with(&["c0-1"])), ("j", clock_with(&["c0-9", "gone"]))]);
        let report = check(&b.0, &f);
        let phantoms: Vec<(&str, &str, Option<OpId>, &PhantomReason)> = report
            .violations
            .iter()
            .filter_map(|v| match v {
                Violation::Phantom { key, value, seen_in, reason, .. } => {
                    Some((key.as_str(), value.as_str(), *seen_in, reason))
                }
                _ => None,
            })
            .collect();
        assert_eq!(
            phantoms,
            vec![
                ("j", "c0-1", Some(other), &PhantomReason::OtherKey(0)),
                ("j", "c0-9", Some(early), &PhantomReason::FromTheFuture(later)),
                ("j", "gone", None, &PhantomReason::NeverWritten),
                ("k", "ghost", Some(read), &PhantomReason::NeverWritten),
            ],
            "{report}"
        );
        assert_eq!(report.violations.len(), 4, "{report}");
        assert!(report
            .to_string()
            .contains("PHANTOM: key k: value \"ghost\" returned by #1 (and 1 more reads)"));
    }

    #[test]
    fn divergent_replicas_are_caught() {
        let mut b = Builder::new();
        b.put("k", "c0-1", None, 0, Outcome::Acked);
        b.put("k", "c1-1", None, 0, Outcome::Acked);
        let full = clock_with(&["c0-1"]).sync(&Clock::new().update(
            &VersionVector::new(),
            Value::Data(b"c1-1".to_vec()),
            B,
        ));
        let mut f = converged(&[("k", full)]);
        // node-3 missed c1-1: no write is lost (the others have it), but the replicas differ.
        f.keys.get_mut("k").unwrap()[2].clock = Ok(clock_with(&["c0-1"]));
        let report = check(&b.0, &f);
        assert_eq!(report.violations, vec![Violation::Diverged { key: "k".into() }], "{report}");
        let text = report.to_string();
        assert!(
            text.contains("node-1: values [c0-1, c1-1] seen {aaaa0000:1 bbbb0000:1}"),
            "{text}"
        );
        assert!(text.contains("node-3: values [c0-1] seen {aaaa0000:1}"), "{text}");
    }

    #[test]
    fn an_unreadable_replica_is_reported() {
        let mut f = converged(&[("k", Clock::new())]);
        f.keys.get_mut("k").unwrap()[1].clock = Err("connection refused".into());
        let history = History::new();
        let report = check(&history, &f);
        assert_eq!(kinds(&report), ["unreadable"]);
    }

    #[test]
    fn an_inconsistent_history_is_a_test_bug() {
        let mut b = Builder::new();
        b.put("k", "c0-1", None, 0, Outcome::Acked);
        b.put("k", "c0-1", None, 20, Outcome::Acked);
        // Context of a put, not of a get.
        b.put("k", "c0-2", Some(0), 40, Outcome::Acked);
        let f = converged(&[("k", clock_with(&["c0-1", "c0-2"]))]);
        assert_eq!(kinds(&check(&b.0, &f)), ["bad history", "bad history"]);
        // A key written but missing from the final state.
        assert_eq!(kinds(&check(&b.0, &FinalState::default()))[2], "bad history");
    }

    #[test]
    fn stats_count_by_kind_and_failure() {
        let mut b = Builder::new();
        b.put("k", "c0-1", None, 0, Outcome::Acked);
        b.put("k", "c0-2", None, 0, failed(Failure::Quorum));
        let g = b.get("k", 20, &["c0-1"]);
        b.op("k", Action::Get, 20, failed(Failure::Timeout));
        b.op("k", Action::Delete { context: g }, 40, Outcome::Acked);
        b.0.faults.push(Fault {
            kind: "pause".into(),
            what: "pause node-1".into(),
            start: ms(0),
            end: None,
        });
        let f = converged(&[("k", Clock::new())]);
        let report = check(&b.0, &f);
        let s = &report.stats;
        assert_eq!((s.total(), s.ok(), s.acked_writes()), (5, 3, 2));
        assert_eq!(s.failed(Failure::Quorum), 1);
        assert_eq!(s.by_kind["get"].failed[&Failure::Timeout], 1);
        let text = s.to_string();
        assert!(
            text.starts_with(
                "operations: 5 (3 ok, 2 acknowledged writes, 2 failed, 1 with quorum errors)"
            ),
            "{text}"
        );
        assert!(text.contains("faults: 1 pause"), "{text}");
    }
}
