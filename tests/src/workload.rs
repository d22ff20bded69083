//! Workload clients that record a [`History`]: concurrent writers on a few hot keys, some doing
//! read-modify-write (get, then put or delete with the get's context), some writing blind,
//! every operation recorded with its start, end, node, context and result.
//!
//! Every value written is unique (`<client>-<seq>`, e.g. `c3-17`), so a value read anywhere
//! names the write it came from. A client's choices (key, node, operation) come from its own
//! RNG seeded from [`WorkloadOptions::seed`], so a seed replays the same choices; the
//! interleaving with other clients and with faults still depends on timing.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use dynamo_client::{Client, ClientError, Versions};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::Code;

use crate::history::{Action, Failure, Fault, History, Op, OpId, Outcome};

/// Collects the history of a run from every client and from the nemesis. Shared by `Arc`;
/// the lock is never held across an await.
pub struct Recorder {
    /// Time zero of the run: every time in the history is measured from here.
    epoch: Instant,
    /// Operations in completion order, and faults.
    history: Mutex<History>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

impl Recorder {
    /// An empty history starting now.
    pub fn new() -> Recorder {
        Recorder { epoch: Instant::now(), history: Mutex::new(History::new()) }
    }

    /// Time since the run began.
    pub fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    fn lock(&self) -> MutexGuard<'_, History> {
        // A panicking client cannot leave the history half-updated (each push is one call).
        self.history.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records a finished operation and returns its id.
    pub fn push(&self, op: Op) -> OpId {
        self.lock().push(op)
    }

    /// Records that a fault begins now; returns its index for [`Recorder::fault_ended`].
    pub fn fault_started(&self, kind: &str, what: String) -> usize {
        let mut h = self.lock();
        h.faults.push(Fault { kind: kind.into(), what, start: self.now(), end: None });
        h.faults.len() - 1
    }

    /// Records that fault `index` has been repaired.
    pub fn fault_ended(&self, index: usize) {
        let now = self.now();
        if let Some(f) = self.lock().faults.get_mut(index) {
            f.end = Some(now);
        }
    }

    /// A copy of the history so far.
    pub fn history(&self) -> History {
        self.lock().clone()
    }
}

/// Shape of a workload.
#[derive(Debug, Clone)]
pub struct WorkloadOptions {
    /// Concurrent clients. Even-numbered ones do read-modify-write (puts and deletes with a
    /// get's context), odd-numbered ones write blind; all of them also read.
    pub clients: usize,
    /// Keys `k0..k{keys-1}`; few keys make concurrent writers meet on the same key.
    pub keys: usize,
    /// Pause between two operations of a client, uniform in `0..=max_think`.
    pub max_think: Duration,
    /// Per-request client timeout (longer than the nodes' quorum timeout, so that a quorum
    /// error arrives before the client gives up, except on a paused node).
    pub timeout: Duration,
    /// Seeds every client's RNG.
    pub seed: u64,
    /// Client names are `<prefix><i>` and values `<prefix><i>-<seq>`; distinct prefixes keep
    /// values unique across several workloads in one history (soak rounds).
    pub prefix: String,
}

impl Default for WorkloadOptions {
    fn default() -> Self {
        WorkloadOptions {
            clients: 6,
            keys: 8,
            max_think: Duration::from_millis(20),
            timeout: Duration::from_secs(3),
            seed: 0,
            prefix: "c".into(),
        }
    }
}

impl WorkloadOptions {
    /// The keys the workload uses.
    pub fn key_names(&self) -> Vec<String> {
        (0..self.keys).map(|i| format!("k{i}")).collect()
    }
}

/// A node a client can send requests to.
#[derive(Clone)]
pub struct Endpoint {
    /// The node's id, for the history.
    pub node: String,
    /// A client bound to that node.
    pub client: Client,
}

/// The running clients. Stop them with [`Workload::stop`] so that every operation in flight
/// is finished and recorded (an unrecorded write would look like a phantom later).
pub struct Workload {
    /// Tells every client to stop after its current operation.
    cancel: CancellationToken,
    /// One task per client, joined by [`Workload::stop`].
    tasks: Vec<JoinHandle<()>>,
}

/// How a client writes.
#[derive(Debug, Clone, Copy)]
enum Style {
    /// Get, then put or delete with the get's context.
    ReadModifyWrite,
    /// Put with an empty context.
    Blind,
}

impl Workload {
    /// Starts the clients; each picks a key, a node and an operation at random, over and over.
    pub fn start(
        endpoints: Vec<Endpoint>,
        opts: &WorkloadOptions,
        recorder: Arc<Recorder>,
    ) -> Workload {
        let cancel = CancellationToken::new();
        let endpoints = Arc::new(endpoints);
        let keys = Arc::new(opts.key_names());
        let tasks = (0..opts.clients)
            .map(|i| {
                let style = if i % 2 == 0 { Style::ReadModifyWrite } else { Style::Blind };
                let seed = opts.seed ^ (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                let client = ClientLoop {
                    name: format!("{}{i}", opts.prefix),
                    style,
                    endpoints: endpoints.clone(),
                    keys: keys.clone(),
                    rng: StdRng::seed_from_u64(seed),
                    recorder: recorder.clone(),
                    max_think: opts.max_think,
                    seq: 0,
                };
                // Not detached: `stop` joins every task.
                tokio::spawn(client.run(cancel.clone()))
            })
            .collect();
        Workload { cancel, tasks }
    }

    /// Asks every client to stop after its current operation and waits until all have.
    pub async fn stop(self) {
        self.cancel.cancel();
        for task in self.tasks {
            if let Err(e) = task.await {
                // A client panicked: surface it in the test rather than losing it.
                std::panic::resume_unwind(e.into_panic());
            }
        }
    }
}

/// One client's state.
struct ClientLoop {
    /// "c3": names the client in the history and prefixes its values.
    name: String,
    /// Read-modify-write or blind.
    style: Style,
    /// The nodes to send requests to, one picked at random per request.
    endpoints: Arc<Vec<Endpoint>>,
    /// The keys to pick from.
    keys: Arc<Vec<String>>,
    /// This client's own seeded RNG: its choices do not depend on the other clients'.
    rng: StdRng,
    /// Where every finished operation goes.
    recorder: Arc<Recorder>,
    /// Upper bound of the pause between two operations.
    max_think: Duration,
    /// Number of values written so far (the suffix of the next value).
    seq: u64,
}

impl ClientLoop {
    async fn run(mut self, cancel: CancellationToken) {
        while !cancel.is_cancelled() {
            let key = self.keys.choose(&mut self.rng).cloned().unwrap_or_default();
            let roll = self.rng.gen_range(0..100);
            match self.style {
                Style::ReadModifyWrite if roll < 10 => {
                    self.get(&key).await;
                }
                Style::ReadModifyWrite => {
                    let (g, got) = self.get(&key).await;
                    if let Some(got) = got {
                        if roll < 85 {
                            self.put(&key, Some((g, got.context))).await;
                        } else {
                            self.delete(&key, g, got.context).await;
                        }
                    }
                }
                Style::Blind if roll < 30 => {
                    self.get(&key).await;
                }
                Style::Blind => self.put(&key, None).await,
            }
            let think = self.rng.gen_range(Duration::ZERO..=self.max_think);
            tokio::select! {
                () = cancel.cancelled() => break,
                () = tokio::time::sleep(think) => {}
            }
        }
    }

    fn endpoint(&mut self) -> Endpoint {
        self.endpoints.choose(&mut self.rng).cloned().expect("a workload needs at least one node")
    }

    async fn get(&mut self, key: &str) -> (OpId, Option<Versions>) {
        let e = self.endpoint();
        recorded_get(&self.recorder, &self.name, &e, key, None).await
    }

    async fn put(&mut self, key: &str, context: Option<(OpId, Vec<u8>)>) {
        let e = self.endpoint();
        self.seq += 1;
        let value = format!("{}-{}", self.name, self.seq);
        recorded_put(&self.recorder, &self.name, &e, key, value, context).await;
    }

    async fn delete(&mut self, key: &str, g: OpId, ctx: Vec<u8>) {
        let e = self.endpoint();
        let start = self.recorder.now();
        let result = e.client.delete(key.as_bytes(), ctx, None).await.map(|_| ());
        record_write(
            &self.recorder,
            &self.name,
            &e,
            key,
            Action::Delete { context: g },
            start,
            result,
        );
    }
}

/// A put of `value` (which must be unique) through `e`, recorded under client `name`.
/// `context` is the get whose context the put carries and that context; `None` writes blind.
pub async fn recorded_put(
    recorder: &Recorder,
    name: &str,
    e: &Endpoint,
    key: &str,
    value: String,
    context: Option<(OpId, Vec<u8>)>,
) -> OpId {
    let (g, ctx) = match context {
        Some((g, ctx)) => (Some(g), ctx),
        None => (None, Vec::new()),
    };
    let start = recorder.now();
    let result = e.client.put(key.as_bytes(), value.clone().into_bytes(), ctx, None).await;
    let action = Action::Put { value, context: g };
    record_write(recorder, name, e, key, action, start, result.map(|_| ()))
}

/// A delete through `e` carrying the context `ctx` of the get `g`, recorded under client `name`.
pub async fn recorded_delete(
    recorder: &Recorder,
    name: &str,
    e: &Endpoint,
    key: &str,
    g: OpId,
    ctx: Vec<u8>,
) -> OpId {
    let start = recorder.now();
    let result = e.client.delete(key.as_bytes(), ctx, None).await.map(|_| ());
    record_write(recorder, name, e, key, Action::Delete { context: g }, start, result)
}

/// Records a finished put or delete that started at `start`.
fn record_write(
    recorder: &Recorder,
    name: &str,
    e: &Endpoint,
    key: &str,
    action: Action,
    start: Duration,
    result: Result<(), ClientError>,
) -> OpId {
    let outcome = match result {
        Ok(()) => Outcome::Acked,
        Err(err) => failed(&err),
    };
    recorder.push(Op {
        id: 0,
        client: name.into(),
        node: e.node.clone(),
        key: key.into(),
        action,
        start,
        end: recorder.now(),
        outcome,
    })
}

/// A get through `e`, recorded under client `name`; `r` overrides the read quorum.
pub async fn recorded_get(
    recorder: &Recorder,
    name: &str,
    e: &Endpoint,
    key: &str,
    r: Option<u32>,
) -> (OpId, Option<Versions>) {
    let start = recorder.now();
    let result = e.client.get(key.as_bytes(), r).await;
    let end = recorder.now();
    let (outcome, got) = match result {
        Ok(got) => {
            let values =
                got.values.iter().map(|v| String::from_utf8_lossy(v).into_owned()).collect();
            (Outcome::Read(values), Some(got))
        }
        Err(err) => (failed(&err), None),
    };
    let id = recorder.push(Op {
        id: 0,
        client: name.into(),
        node: e.node.clone(),
        key: key.into(),
        action: Action::Get,
        start,
        end,
        outcome,
    });
    (id, got)
}

fn failed(err: &ClientError) -> Outcome {
    Outcome::Failed { failure: classify(err), message: err.to_string() }
}

/// What a client error says about whether the request may have been applied.
pub fn classify(err: &ClientError) -> Failure {
    match err {
        ClientError::Timeout { .. } => Failure::Timeout,
        ClientError::Connect { .. } | ClientError::Tls { .. } => Failure::Unreachable,
        // Refused for its credential before anything was done.
        ClientError::Unauthenticated { .. } | ClientError::PermissionDenied { .. } => {
            Failure::Rejected
        }
        // A write goes to another node only when nothing reached the previous one.
        ClientError::Exhausted { .. } => Failure::Unreachable,
        ClientError::InvalidRing { .. }
        | ClientError::NoEndpoint
        | ClientError::StillMember { .. }
        | ClientError::NotAdminPort { .. }
        | ClientError::Settings(_) => Failure::Other,
        ClientError::Node { code, message } => match code {
            Code::Unavailable if message.contains("required replicas answered") => Failure::Quorum,
            Code::Unavailable if message.contains("could coordinate") => Failure::Unavailable,
            // The node's own refusals, before anything is written.
            Code::InvalidArgument | Code::FailedPrecondition => Failure::Rejected,
            // Refused by the admission limit before the request was read.
            Code::ResourceExhausted if message.contains("node overloaded") => Failure::Rejected,
            Code::DeadlineExceeded | Code::Cancelled => Failure::Timeout,
            _ => Failure::Other,
        },
    }
}
