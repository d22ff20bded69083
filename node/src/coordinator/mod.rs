//! Request coordination (paper section 4.5, 6.4): each get, put and delete is a small state
//! machine run by the node that received it. It sends to the first N nodes of the key's
//! preference list, waits for R replies (get) or W acknowledgements (put), fails with a clear
//! quorum error after the timeout, reconciles versions, and repairs stale replicas.
//!
//! Requests go to the first N *healthy* nodes (sloppy quorum, `targets`): a replica this node
//! cannot reach is replaced by the next healthy node of the preference list, which keeps the
//! write as a hint for it.
//!
//! Puts are coordinated by one of the key's N replicas, because only a replica has the local
//! clock from which the next version is made; any other node forwards to the first reachable
//! one. Gets may be coordinated anywhere.

pub mod quorum;
pub mod repair;
pub mod targets;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::config::Limits;
use crate::error::{Error, Op, Result};
use crate::metrics::METRICS;
use crate::net::{ForwardedPut, PeerError, PutOutcome, Replicas};
use crate::ring::{key_hash, partition_of_hash, NodeId, PartitionId, Placement, Ring};
use crate::storage::Store;
use crate::version::{Clock, ContextSealer, Value};
use quorum::{ManySets, QuorumState, QuorumTracker};
use targets::Target;

/// How often a write may be forwarded before it is refused (rings can disagree briefly while a
/// layout change propagates; a second hop lets the write follow the newer ring).
const MAX_HOPS: u32 = 2;

/// Whether a failed replica call should be retried on a stand-in: the replica did not answer
/// (an answer with an error of its own means it is up and refused the request).
fn needs_stand_in(e: &PeerError) -> bool {
    matches!(e, PeerError::Unreachable(_) | PeerError::Timeout | PeerError::Interrupted(_))
}

/// An operation's metric label.
pub fn op_name(op: Op) -> &'static str {
    match op {
        Op::Get => "get",
        Op::Put => "put",
        Op::Delete => "delete",
    }
}

/// Why a quorum was missed: the deadline passed, or too many replicas failed before it.
fn failure_cause(deadline: Instant) -> &'static str {
    if Instant::now() >= deadline {
        "timeout"
    } else {
        "replicas_failed"
    }
}

/// A replica's answer to a fetch, tagged with whom it was asked of.
type Reply = (Target, std::result::Result<Clock, PeerError>);
/// A replica's answer to a replicate.
type Ack = (Target, std::result::Result<(), PeerError>);

/// Replication settings and limits a coordinator applies.
#[derive(Debug, Clone)]
pub struct Settings {
    pub n: usize,
    pub r: usize,
    pub w: usize,
    /// How long a request waits for its quorum.
    pub timeout: Duration,
    pub limits: Limits,
    /// Q, fixed for the cluster: where a key lives on disk does not depend on the ring.
    pub partitions: u32,
    /// How long a node may be down and still get hints.
    pub hint_window: Duration,
}

/// What a get returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetOutcome {
    /// Live concurrent values; empty when the key is absent or deleted.
    pub values: Vec<Vec<u8>>,
    /// Sealed context covering every version seen; empty when nothing was stored.
    pub context: Vec<u8>,
    /// Replicas whose replies the answer is built from.
    pub replies: usize,
}

/// Runs client requests on behalf of this node. One per node, shared by every request.
pub struct Coordinator<T> {
    me: NodeId,
    settings: Settings,
    /// Where keys live; replaced as a whole when membership changes.
    placement: watch::Receiver<Arc<Placement>>,
    store: Arc<Store>,
    /// Calls to the other replicas.
    net: Arc<T>,
    sealer: ContextSealer,
}

impl<T: Replicas> Coordinator<T> {
    pub fn new(
        me: NodeId,
        settings: Settings,
        placement: watch::Receiver<Arc<Placement>>,
        store: Arc<Store>,
        net: Arc<T>,
        sealer: ContextSealer,
    ) -> Self {
        Coordinator { me, settings, placement, store, net, sealer }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Where keys live now (and where they move to during a layout change).
    pub fn placement(&self) -> Arc<Placement> {
        self.placement.borrow().clone()
    }

    /// The partition of a key (independent of the ring).
    pub fn partition_of(&self, key: &[u8]) -> PartitionId {
        partition_of_hash(key_hash(key), self.settings.partitions)
    }

    pub fn me(&self) -> &NodeId {
        &self.me
    }

    fn check_key(&self, key: &[u8]) -> Result<()> {
        if key.is_empty() {
            return Err(Error::InvalidArgument(
                "the key is empty; keys are 1 or more bytes".into(),
            ));
        }
        let max = self.settings.limits.max_key_bytes;
        if key.len() > max {
            return Err(Error::InvalidArgument(format!(
                "the key is {} bytes, more than the limit of {max} (limits.max_key_bytes)",
                key.len()
            )));
        }
        Ok(())
    }

    fn check_quorum(&self, name: &str, value: Option<u32>, default: usize) -> Result<usize> {
        let n = self.settings.n;
        match value {
            None => Ok(default),
            Some(v) if (1..=n as u32).contains(&v) => Ok(v as usize),
            Some(v) => Err(Error::InvalidArgument(format!(
                "{name}={v} is outside 1..={n}: this cluster keeps n={n} replicas of each key"
            ))),
        }
    }

    /// The key's preference list (every member, in order; the first N are its replicas).
    fn preference(&self, ring: &Ring, partition: PartitionId) -> Vec<NodeId> {
        ring.preference_list(partition).iter().map(|m| m.id.clone()).collect()
    }

    /// Reads a key: every live sibling and a context covering them.
    pub async fn get(&self, key: &[u8], r: Option<u32>) -> Result<GetOutcome> {
        self.check_key(key)?;
        let r = self.check_quorum("r", r, self.settings.r)?;
        let placement = self.placement();
        let ring = placement.ring()?;
        let partition = self.partition_of(key);
        let preference = self.preference(ring, partition);
        let (targets, mut spares) =
            targets::select(&preference, self.settings.n, &self.me, |n| self.net.is_up(n));
        let deadline = Instant::now() + self.settings.timeout;

        let (tx, mut rx) = mpsc::unbounded_channel();
        for target in &targets {
            self.spawn_fetch(target.clone(), key, &tx);
        }
        let mut tracker = QuorumTracker::new(r, targets.len());
        let mut asked: Vec<NodeId> = targets.iter().map(|t| t.node.clone()).collect();
        let mut replies: Vec<(Target, Clock)> = Vec::new();
        while tracker.state() == QuorumState::Waiting {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some((target, Ok(clock)))) => {
                    tracker.succeeded(target.node.clone());
                    replies.push((target, clock));
                }
                Ok(Some((target, Err(e)))) => {
                    tracker.failed(target.node.clone(), e.to_string());
                    let stand_in = if needs_stand_in(&e) { spares.pop_front() } else { None };
                    if let Some(stand_in) = stand_in {
                        let hint_for = target.hint_for.clone().unwrap_or(target.node.clone());
                        let stand_in = Target { node: stand_in, hint_for: Some(hint_for) };
                        tracker.add_target();
                        asked.push(stand_in.node.clone());
                        self.spawn_fetch(stand_in, key, &tx);
                    }
                }
                Ok(None) | Err(_) => break,
            }
        }
        drop(tx);
        if tracker.state() != QuorumState::Reached {
            METRICS.quorum_failed("get", failure_cause(deadline));
            return Err(self.quorum_error(Op::Get, &tracker, &asked));
        }

        let merged = repair::merge_replies(&replies);
        let outcome = GetOutcome {
            values: merged.live_values().into_iter().map(<[u8]>::to_vec).collect(),
            context: if merged.is_empty() {
                Vec::new()
            } else {
                self.sealer.seal(key, &merged.context())
            },
            replies: replies.len(),
        };
        METRICS.siblings.observe(outcome.values.len() as f64);
        self.spawn_read_repair(key.to_vec(), partition, replies, rx, deadline);
        Ok(outcome)
    }

    /// Reads one target's replica (the local store directly when the target is this node).
    fn spawn_fetch(&self, target: Target, key: &[u8], tx: &mpsc::UnboundedSender<Reply>) {
        if target.node == self.me {
            let reply = self.local_replica(key, target.hint_for.as_ref()).map_err(|e| {
                PeerError::Remote { code: tonic::Code::Internal as i32, message: e.to_string() }
            });
            let _ = tx.send((target, reply));
            return;
        }
        let (tx, transport, key) = (tx.clone(), self.net.clone(), key.to_vec());
        // Detached on purpose: a slow replica's reply still feeds read repair after the
        // client has its answer; the task ends when the transport's own timeout fires.
        tokio::spawn(async move {
            let reply = transport.fetch(&target.node, &key, target.hint_for.as_ref()).await;
            let _ = tx.send((target, reply));
        });
    }

    /// Waits (until the deadline) for the replicas that had not answered yet, then sends the
    /// merged version to every replica that answered with less.
    fn spawn_read_repair(
        &self,
        key: Vec<u8>,
        partition: PartitionId,
        mut replies: Vec<(Target, Clock)>,
        mut rx: mpsc::UnboundedReceiver<Reply>,
        deadline: Instant,
    ) {
        let (me, store, transport) = (self.me.clone(), self.store.clone(), self.net.clone());
        // Detached on purpose: repair must not delay the client's answer; it is bounded by the
        // request deadline plus one replicate call per stale replica.
        tokio::spawn(async move {
            while let Ok(Some((target, reply))) = tokio::time::timeout_at(deadline, rx.recv()).await
            {
                if let Ok(clock) = reply {
                    replies.push((target, clock));
                }
            }
            let by_node: Vec<(NodeId, Clock)> =
                replies.iter().map(|(t, c)| (t.node.clone(), c.clone())).collect();
            let merged = repair::merge_replies(&by_node);
            for node in repair::stale_replicas(&by_node, &merged) {
                let hint_for = replies
                    .iter()
                    .find(|(t, _)| t.node == *node)
                    .and_then(|(t, _)| t.hint_for.clone());
                let result = if *node == me {
                    store
                        .accept(&me, partition, &key, &merged, hint_for.as_ref())
                        .map_err(|e| e.to_string())
                } else {
                    transport
                        .replicate(node, &key, &merged, hint_for.as_ref())
                        .await
                        .map_err(|e| e.to_string())
                };
                match result {
                    Ok(()) => {
                        METRICS.read_repairs.inc();
                        tracing::debug!(%node, "read repair sent")
                    }
                    Err(e) => tracing::debug!(%node, error = %e, "read repair failed"),
                }
            }
        });
    }

    /// Writes a value (`Some`) or a tombstone (`None`) superseding what `context` covers.
    /// `hops` counts how often the write was already forwarded to get here (0 from a client).
    pub async fn put(
        &self,
        key: &[u8],
        value: Option<Vec<u8>>,
        context: &[u8],
        w: Option<u32>,
        hops: u32,
    ) -> Result<PutOutcome> {
        let op = if value.is_some() { Op::Put } else { Op::Delete };
        self.check_key(key)?;
        if let Some(v) = &value {
            let max = self.settings.limits.max_value_bytes;
            if v.len() > max {
                return Err(Error::InvalidArgument(format!(
                    "the value is {} bytes, more than the limit of {max} (limits.max_value_bytes)",
                    v.len()
                )));
            }
        }
        let w = self.check_quorum("w", w, self.settings.w)?;
        // Check the context before anything is written or forwarded.
        let ctx = self.sealer.open(key, context)?;

        let placement = self.placement();
        let ring = placement.ring()?;
        let partition = self.partition_of(key);
        let preference = self.preference(ring, partition);
        let replicas = &preference[..self.settings.n.min(preference.len())];
        // During a layout change, the replicas the partition moves to.
        let next_replicas: Vec<NodeId> = placement
            .next
            .as_ref()
            .map_or_else(Vec::new, |next| next.replicas(partition, self.settings.n));
        // A node becoming a replica in a layout change under way may coordinate too: it holds
        // every version it ever created, which is all a coordinator needs.
        let becoming_replica = next_replicas.contains(&self.me);
        let may_coordinate = replicas.contains(&self.me) || (hops > 0 && becoming_replica);
        if !may_coordinate {
            if hops >= MAX_HOPS {
                return Err(Error::NotReady(format!(
                    "the write was forwarded {hops} times without reaching a replica of the key: \
                     the nodes' rings disagree while a layout change propagates; retry shortly"
                )));
            }
            let put = ForwardedPut {
                key: key.to_vec(),
                value,
                context: context.to_vec(),
                w: Some(w as u32),
                hops: hops + 1,
            };
            METRICS.forwarded(op_name(op), "sent");
            return self.forward(op, put, replicas).await;
        }

        let limits = self.settings.limits.clone();
        let value = match value {
            Some(v) => Value::Data(v),
            None => Value::Tombstone,
        };
        let clock = self.store.update_as(partition, key, |local, actor| {
            let next = local.update(&ctx, value, actor);
            if next.sibling_count() > limits.max_siblings {
                return Err(Error::TooManySiblings {
                    siblings: next.sibling_count(),
                    max: limits.max_siblings,
                });
            }
            if next.value_bytes() > limits.max_object_bytes {
                return Err(Error::ObjectTooLarge {
                    bytes: next.value_bytes(),
                    max: limits.max_object_bytes,
                });
            }
            Ok(next)
        })?;

        // During a layout change the write must also reach W of the replicas it moves to, so
        // that nothing acknowledged is left behind when ownership flips.
        let sets = if next_replicas.is_empty() { Vec::new() } else { vec![next_replicas] };
        let acks = self.write_many_sets(op, key, &clock, &preference, w, sets).await?;
        Ok(PutOutcome { context: self.sealer.seal(key, &clock.context()), acks })
    }

    /// Sends a version this node just wrote to the key's first N healthy nodes (stand-ins
    /// replace those that do not answer) and to every node of `sets`, and waits until W of
    /// those first N nodes and their stand-ins acknowledged AND W of each set did (Garage's
    /// `try_write_many_sets`; during a layout change the one extra set is the next layout's
    /// replicas). This node's own write counts wherever it belongs. Returns the
    /// acknowledgements among the first N and their stand-ins, or the quorum error of the
    /// first requirement missed.
    async fn write_many_sets(
        &self,
        op: Op,
        key: &[u8],
        clock: &Clock,
        preference: &[NodeId],
        w: usize,
        sets: Vec<Vec<NodeId>>,
    ) -> Result<usize> {
        let (targets, mut spares) =
            targets::select(preference, self.settings.n, &self.me, |n| self.net.is_up(n));
        let mut asked: Vec<NodeId> = targets.iter().map(|t| t.node.clone()).collect();
        let mut extra: Vec<NodeId> = Vec::new();
        for node in sets.iter().flatten() {
            if *node != self.me && !asked.contains(node) && !extra.contains(node) {
                extra.push(node.clone());
            }
        }
        let mut quorum = ManySets::new(w, targets.iter().map(|t| t.node.clone()).collect(), sets);
        quorum.succeeded(&self.me);
        let (tx, mut rx) = mpsc::unbounded_channel();
        for node in extra {
            asked.push(node.clone());
            self.spawn_replicate(Target { node, hint_for: None }, key, clock, &tx);
        }
        for target in targets.into_iter().filter(|t| t.node != self.me) {
            self.spawn_replicate(target, key, clock, &tx);
        }
        let deadline = Instant::now() + self.settings.timeout;
        while quorum.state() == QuorumState::Waiting {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some((target, Ok(())))) => quorum.succeeded(&target.node),
                Ok(Some((target, Err(e)))) => {
                    quorum.failed(&target.node, &e.to_string());
                    // Sloppy quorum: a replica that cannot be reached is replaced at once by
                    // the next healthy node, which keeps the write as a hint.
                    let stand_in = if needs_stand_in(&e) { spares.pop_front() } else { None };
                    if let Some(stand_in) = stand_in {
                        let hint_for = target.hint_for.unwrap_or(target.node);
                        quorum.add_target(&stand_in);
                        asked.push(stand_in.clone());
                        self.spawn_replicate(
                            Target { node: stand_in, hint_for: Some(hint_for) },
                            key,
                            clock,
                            &tx,
                        );
                    }
                }
                Ok(None) | Err(_) => break,
            }
        }
        drop(tx);
        self.spawn_hint_tail(rx, spares, key, clock);
        if quorum.state() != QuorumState::Reached {
            METRICS.quorum_failed(op_name(op), failure_cause(deadline));
            return Err(self.quorum_error(op, quorum.missed(), &asked));
        }
        Ok(quorum.sent().successes())
    }

    /// After the answer, replicas that fail late (the quorum was already reached without
    /// them) still get a stand-in holding a hint, so hinted handoff covers every replica the
    /// write missed, not only those that failed before the answer.
    fn spawn_hint_tail(
        &self,
        mut rx: mpsc::UnboundedReceiver<Ack>,
        mut spares: std::collections::VecDeque<NodeId>,
        key: &[u8],
        clock: &Clock,
    ) {
        let (transport, key, clock) = (self.net.clone(), key.to_vec(), clock.clone());
        let deadline = Instant::now() + self.settings.timeout * 3;
        // Detached on purpose: bounded by the deadline and one replicate per late failure.
        tokio::spawn(async move {
            while let Ok(Some((target, result))) =
                tokio::time::timeout_at(deadline, rx.recv()).await
            {
                let Err(e) = result else { continue };
                if !needs_stand_in(&e) {
                    continue;
                }
                let Some(stand_in) = spares.pop_front() else { return };
                let hint_for = target.hint_for.unwrap_or(target.node);
                if let Err(e) = transport.replicate(&stand_in, &key, &clock, Some(&hint_for)).await
                {
                    tracing::debug!(%stand_in, %hint_for, error = %e, "late hint failed");
                }
            }
        });
    }

    fn spawn_replicate(
        &self,
        target: Target,
        key: &[u8],
        clock: &Clock,
        tx: &mpsc::UnboundedSender<Ack>,
    ) {
        let (tx, transport, key, clock) =
            (tx.clone(), self.net.clone(), key.to_vec(), clock.clone());
        // Detached on purpose: replication to the slower replicas continues after the client
        // has its W acknowledgements; bounded by the transport's timeout.
        tokio::spawn(async move {
            let result =
                transport.replicate(&target.node, &key, &clock, target.hint_for.as_ref()).await;
            let _ = tx.send((target, result));
        });
    }

    /// Hands a write to the first reachable replica. Only a replica that could not be reached
    /// at all is skipped; one that timed out, or whose connection broke after the write was
    /// sent, may have applied it, so the error is returned rather than risking a second
    /// coordinator writing it again (a second version: a spurious sibling).
    async fn forward(&self, op: Op, put: ForwardedPut, replicas: &[NodeId]) -> Result<PutOutcome> {
        let mut errors = Vec::new();
        // Replicas believed up first, in preference order; then the others, just in case.
        let (up, down): (Vec<&NodeId>, Vec<&NodeId>) =
            replicas.iter().partition(|n| self.net.is_up(n));
        for node in up.into_iter().chain(down) {
            match self.net.coordinate_put(node, put.clone()).await {
                Ok(outcome) => return Ok(outcome),
                Err(PeerError::Unreachable(e)) => errors.push(format!("{node}: unreachable: {e}")),
                Err(PeerError::Timeout) => {
                    errors
                        .push(format!("{node}: timed out (the write may have been applied there)"));
                    break;
                }
                Err(PeerError::Interrupted(e)) => {
                    errors.push(format!(
                        "{node}: connection lost after sending ({e}; the write may have been \
                         applied there)"
                    ));
                    break;
                }
                Err(PeerError::Remote { code, message }) => {
                    return Err(Error::Remote { code, message })
                }
            }
        }
        METRICS.quorum_failed(op_name(op), "no_coordinator");
        Err(Error::Unavailable { op, errors })
    }

    fn quorum_error(&self, op: Op, tracker: &QuorumTracker, asked: &[NodeId]) -> Error {
        Error::Quorum {
            op,
            required: tracker.required(),
            ok: tracker.successes(),
            tried: tracker.total(),
            timeout_ms: self.settings.timeout.as_millis() as u64,
            errors: tracker.explain(asked),
        }
    }

    /// Merges a version replicated by another node into the local replica, or, with
    /// `hint_for` naming another node, keeps it as a hint for that node.
    pub fn apply_replica(
        &self,
        key: &[u8],
        clock: &Clock,
        hint_for: Option<&NodeId>,
    ) -> Result<()> {
        self.check_key(key)?;
        if let Some(target) = hint_for.filter(|t| **t != self.me) {
            self.check_hint(target)?;
        }
        self.store.accept(&self.me, self.partition_of(key), key, clock, hint_for)
    }

    /// Whether this node may keep a hint for `target`: a member of the ring (current or the
    /// one being moved to) that has not been down longer than the hint window.
    fn check_hint(&self, target: &NodeId) -> Result<()> {
        let placement = self.placement();
        let member = [&placement.current, &placement.next]
            .into_iter()
            .flatten()
            .any(|ring| ring.member(target).is_some());
        if !member {
            crate::metrics::METRICS.hint_dropped("not_member");
            return Err(Error::HintRefused(format!(
                "a hint for '{target}', which is not a member of this cluster's ring, was refused"
            )));
        }
        if let Some(down) = self.net.down_for(target) {
            if down > self.settings.hint_window {
                crate::metrics::METRICS.hint_dropped("past_window");
                return Err(Error::HintRefused(format!(
                    "'{target}' has been down for {} s, past the hint window of {} s: no more \
                     hints are kept for it; anti-entropy repairs it when it returns",
                    down.as_secs(),
                    self.settings.hint_window.as_secs()
                )));
            }
        }
        Ok(())
    }

    /// The local replica of a key, for another node's get; with `hint_for`, merged with the
    /// hint held for that node.
    pub fn local_replica(&self, key: &[u8], hint_for: Option<&NodeId>) -> Result<Clock> {
        self.check_key(key)?;
        self.store.replica(&self.me, self.partition_of(key), key, hint_for)
    }
}
