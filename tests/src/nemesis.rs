//! Nemeses: faults injected into a running [`Cluster`] on a seeded schedule (kill -9 and
//! restart, SIGSTOP and SIGCONT, wiping a node's data directory, network partitions and
//! healing), and bringing the cluster back afterwards: [`heal_all`] undoes every fault and
//! [`converge`] waits until every replica of every key holds the same version.
//!
//! The schedule injects one fault at a time and repairs it before the next one, so at most
//! one node is down, paused or isolated at any moment: with N=3 and W=2 (or R=2) every quorum
//! stays reachable, and any acknowledged write that goes missing is a bug. Wipes destroy data
//! on purpose; with no anti-entropy yet, two wipes of different nodes without a convergence in
//! between can destroy the only copies of a write, so a run allows at most
//! [`NemesisOptions::max_wipes`] of them (the soak allows one per round and converges between
//! rounds).
//!
//! Adding and removing nodes are not nemeses yet; they join this schedule once membership
//! changes are settled (their own tests are in `tests/membership.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use dynamo_client::Client;

use crate::cluster::{local_replica_at, Access, Cluster, Placement};
use crate::history::{FinalState, ReplicaState};
use crate::workload::{recorded_get, Endpoint, Recorder, Workload, WorkloadOptions};

/// A kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// kill -9, then restart on the same data directory.
    Kill,
    /// SIGSTOP, then SIGCONT: the process keeps its sockets but answers nothing.
    Pause,
    /// Cut one node off from every other node (in both directions) through the nodes' fault
    /// switch; clients still reach it. Then heal.
    Partition,
    /// kill -9, delete the data directory, restart empty (a replaced disk).
    Wipe,
}

impl FaultKind {
    /// Name used in the history and the statistics.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::Pause => "pause",
            FaultKind::Partition => "partition",
            FaultKind::Wipe => "wipe",
        }
    }
}

/// What the nemesis does and how often.
#[derive(Debug, Clone)]
pub struct NemesisOptions {
    /// The kinds to draw from; each cycle goes through all of them in a random order, so every
    /// kind occurs regularly.
    pub kinds: Vec<FaultKind>,
    /// How long a fault lasts before it is repaired, uniform in this range.
    pub fault: (Duration, Duration),
    /// Quiet time before each fault, uniform in this range.
    pub calm: (Duration, Duration),
    /// Wipes allowed in one [`Nemesis::run`] (see the module docs).
    pub max_wipes: usize,
    /// Seeds the schedule: which fault, which node, how long.
    pub seed: u64,
}

impl Default for NemesisOptions {
    fn default() -> Self {
        NemesisOptions {
            kinds: vec![FaultKind::Kill, FaultKind::Pause, FaultKind::Partition],
            fault: (Duration::from_millis(1000), Duration::from_millis(4000)),
            calm: (Duration::from_millis(300), Duration::from_millis(1500)),
            max_wipes: 0,
            seed: 0,
        }
    }
}

/// Injects faults one at a time on a seeded schedule.
pub struct Nemesis {
    /// What to inject and how often.
    opts: NemesisOptions,
    /// Seeded from `opts.seed`: the whole schedule follows from it.
    rng: StdRng,
    /// Kinds left in the current cycle.
    bag: Vec<FaultKind>,
}

impl Nemesis {
    /// A nemesis with its own RNG seeded from `opts.seed`.
    pub fn new(opts: NemesisOptions) -> Nemesis {
        let rng = StdRng::seed_from_u64(opts.seed);
        Nemesis { opts, rng, bag: Vec::new() }
    }

    fn next_kind(&mut self, wipes_left: bool) -> Option<FaultKind> {
        for _ in 0..2 {
            while let Some(kind) = self.bag.pop() {
                if kind != FaultKind::Wipe || wipes_left {
                    return Some(kind);
                }
            }
            self.bag = self.opts.kinds.clone();
            self.bag.shuffle(&mut self.rng);
        }
        None
    }

    fn between(&mut self, (lo, hi): (Duration, Duration)) -> Duration {
        if hi <= lo {
            return lo;
        }
        self.rng.gen_range(lo..=hi)
    }

    /// Injects and repairs faults until `duration` has passed (the last repair may end a
    /// little later). Each fault is recorded in the history with its start and end.
    pub async fn run(
        &mut self,
        cluster: &mut Cluster,
        recorder: &Recorder,
        duration: Duration,
    ) -> anyhow::Result<()> {
        let end = Instant::now() + duration;
        let mut wipes = 0;
        loop {
            let calm = self.between(self.opts.calm);
            if Instant::now() + calm >= end {
                tokio::time::sleep_until(end).await;
                return Ok(());
            }
            tokio::time::sleep(calm).await;
            let Some(kind) = self.next_kind(wipes < self.opts.max_wipes) else {
                tokio::time::sleep_until(end).await;
                return Ok(());
            };
            let node = self.rng.gen_range(0..cluster.nodes.len());
            let hold = self.between(self.opts.fault);
            if kind == FaultKind::Wipe {
                wipes += 1;
            }
            inject(cluster, recorder, kind, node, hold).await?;
        }
    }
}

/// Injects one fault on node `i`, holds it for `hold`, repairs it; recorded in the history.
pub async fn inject(
    cluster: &mut Cluster,
    recorder: &Recorder,
    kind: FaultKind,
    i: usize,
    hold: Duration,
) -> anyhow::Result<()> {
    let id = cluster.nodes[i].id.clone();
    let what = match kind {
        FaultKind::Partition => {
            let others: Vec<&str> =
                cluster.nodes.iter().filter(|n| n.id != id).map(|n| n.id.as_str()).collect();
            format!("partition [{}] | [{id}]", others.join(" "))
        }
        _ => format!("{} {id}", kind.name()),
    };
    let fault = recorder.fault_started(kind.name(), what.clone());
    match kind {
        FaultKind::Kill => {
            cluster.kill(i);
            tokio::time::sleep(hold).await;
            cluster.restart(i).await
        }
        FaultKind::Pause => {
            cluster.pause(i);
            tokio::time::sleep(hold).await;
            cluster.resume_and_sync_faults(i).await
        }
        FaultKind::Partition => {
            let others: Vec<usize> = (0..cluster.nodes.len()).filter(|j| *j != i).collect();
            cluster.partition(&[others.as_slice(), &[i]]).await?;
            tokio::time::sleep(hold).await;
            cluster.heal().await
        }
        FaultKind::Wipe => {
            cluster.kill(i);
            cluster.wipe(i)?;
            tokio::time::sleep(hold).await;
            cluster.restart(i).await
        }
    }
    .with_context(|| format!("repairing the fault '{what}'"))?;
    recorder.fault_ended(fault);
    Ok(())
}

/// Undoes every fault: restarts killed nodes, resumes paused ones, removes partitions.
pub async fn heal_all(cluster: &mut Cluster) -> anyhow::Result<()> {
    for i in 0..cluster.nodes.len() {
        if !cluster.is_running(i) {
            cluster.restart(i).await?;
        } else if cluster.is_paused(i) {
            cluster.resume(i);
        }
    }
    cluster.heal().await
}

/// How long [`converge`] waits for the replicas to agree.
pub const CONVERGE_TIMEOUT: Duration = Duration::from_secs(20);

/// How long [`converge`] polls the replicas before reading the stragglers again.
const REREAD_AFTER: Duration = Duration::from_secs(2);

/// Brings every replica of `keys` to the same version and returns what each replica holds
/// (for [`crate::history::check`]). Call it on a healed cluster with no workload running.
///
/// First it waits until no node holds hints any more (a write a stand-in took for an
/// unreachable replica reaches that replica only through hinted handoff). Then, without
/// relying on anti-entropy, it reads every key with `r = N` (recorded in the history as client
/// "converge"; read repair then sends the merged version to the stale replicas,
/// asynchronously) and polls the replicas until they hold equal clocks, reading a key again if
/// its replicas still differ after a while. It gives up after [`CONVERGE_TIMEOUT`] and returns
/// the replicas as they are, with notes on what did not settle; the checker reports the keys
/// that still differ. This is the one place to switch to anti-entropy once it is trusted.
pub async fn converge(
    cluster: &Cluster,
    keys: &[String],
    recorder: &Recorder,
) -> anyhow::Result<FinalState> {
    let nodes: Vec<NodeAddress> = cluster
        .nodes
        .iter()
        .map(|n| NodeAddress {
            id: n.id.clone(),
            address: n.address.clone(),
            peer_address: n.peer_address.clone(),
        })
        .collect();
    converge_nodes(&nodes, cluster.access(), &cluster.placement().await?, keys, recorder).await
}

/// A node by id and addresses, for [`converge_nodes`].
#[derive(Debug, Clone)]
pub struct NodeAddress {
    /// The node's id.
    pub id: String,
    /// Its client endpoint, HOST:PORT.
    pub address: String,
    /// Its peer port (internode and admin APIs), HOST:PORT.
    pub peer_address: String,
}

/// [`converge`] over any set of nodes (`placement` indexes into `nodes`): a cluster this crate
/// did not start, such as the pods of a Kubernetes e2e test. `access` holds an admin
/// credential (reads, hints in the status) and a peer certificate (each replica's own copy).
pub async fn converge_nodes(
    nodes: &[NodeAddress],
    access: &Access,
    placement: &Placement,
    keys: &[String],
    recorder: &Recorder,
) -> anyhow::Result<FinalState> {
    let n = u32::try_from(placement.n()).context("N does not fit a u32")?;
    let endpoints: Vec<Endpoint> = nodes
        .iter()
        .map(|node| Endpoint {
            node: node.id.clone(),
            client: Client::builder([node.address.as_str()])
                .partition_aware(false)
                .credentials(access.admin.clone())
                .admin_endpoint(node.peer_address.as_str())
                .timeout(Duration::from_secs(10))
                .build()
                .expect("valid address"),
        })
        .collect();
    let deadline = Instant::now() + CONVERGE_TIMEOUT;
    let mut notes = Vec::new();
    let hints = loop {
        let hints = pending_hints(&endpoints).await;
        if hints.is_empty() || Instant::now() >= deadline {
            break hints;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    notes.extend(hints.into_iter().map(|h| format!("after {CONVERGE_TIMEOUT:?}, {h}")));

    let mut pending: BTreeSet<&String> = keys.iter().collect();
    let mut states: BTreeMap<String, Vec<ReplicaState>> = BTreeMap::new();
    for round in 0.. {
        for (j, key) in pending.iter().enumerate() {
            let e = &endpoints[(j + round) % endpoints.len()];
            recorded_get(recorder, "converge", e, key, Some(n)).await;
        }
        let reread = (Instant::now() + REREAD_AFTER).min(deadline);
        loop {
            let mut agreed = Vec::new();
            for &key in &pending {
                let mut replicas = Vec::new();
                for i in placement.replicas(key.as_bytes()) {
                    let clock =
                        local_replica_at(&nodes[i].peer_address, &access.peer, key.as_bytes())
                            .await
                            .map_err(|e| format!("{e:#}"));
                    replicas.push(ReplicaState { node: nodes[i].id.clone(), clock });
                }
                let ok: Vec<_> = replicas.iter().filter_map(|r| r.clock.as_ref().ok()).collect();
                if ok.len() == replicas.len() && ok.windows(2).all(|w| w[0] == w[1]) {
                    agreed.push(key);
                }
                states.insert(key.clone(), replicas);
            }
            for key in agreed {
                pending.remove(key);
            }
            if pending.is_empty() || Instant::now() >= reread {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if pending.is_empty() || Instant::now() >= deadline {
            break;
        }
    }
    for key in pending {
        notes.push(format!("the replicas of {key} still differed after {CONVERGE_TIMEOUT:?}"));
    }
    Ok(FinalState { keys: states, notes })
}

/// "node-2 holds 3 hints for node-3" for every node holding hints (or that cannot say).
async fn pending_hints(endpoints: &[Endpoint]) -> Vec<String> {
    let mut pending = Vec::new();
    for e in endpoints {
        match e.client.status().await {
            Ok(status) => pending.extend(
                status
                    .hints
                    .iter()
                    .filter(|h| h.count > 0)
                    .map(|h| format!("{} holds {} hints for {}", e.node, h.count, h.target)),
            ),
            Err(err) => pending.push(format!("{} does not report its hints: {err}", e.node)),
        }
    }
    pending
}

/// Endpoints for a workload: one per node, with the workload's client timeout.
pub fn endpoints(cluster: &Cluster, timeout: Duration) -> Vec<Endpoint> {
    (0..cluster.nodes.len())
        .map(|i| Endpoint {
            node: cluster.nodes[i].id.clone(),
            client: cluster.client_with_timeout(i, timeout),
        })
        .collect()
}

/// One round of a fault test: runs the workload while the nemesis injects faults for
/// `duration`, heals everything, stops the workload (its operations in flight finish and are
/// recorded) and converges. Returns the final state of every key of the workload; the history
/// is in `recorder`.
pub async fn faulty_round(
    cluster: &mut Cluster,
    recorder: &Arc<Recorder>,
    workload: &WorkloadOptions,
    nemesis: &mut Nemesis,
    duration: Duration,
) -> anyhow::Result<FinalState> {
    let running = Workload::start(endpoints(cluster, workload.timeout), workload, recorder.clone());
    let faults = nemesis.run(cluster, recorder, duration).await;
    let healed = heal_all(cluster).await;
    running.stop().await;
    faults?;
    healed?;
    converge(cluster, &workload.key_names(), recorder).await
}
