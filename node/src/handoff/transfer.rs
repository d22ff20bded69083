//! Partition transfer on join and leave: while a layout change is under way, every node that
//! gains a partition pulls it, page by page, from a current replica and merges each key; then
//! it reports the epoch as synced, which lets the claimant commit (ownership flips only after
//! the data moved). Writes that arrive meanwhile already reach the new replicas (the
//! coordinator writes to both layouts), so the snapshot plus those writes is complete. A pull
//! that fails (the source died, this node restarted) starts the partition again: merging is
//! idempotent, so repeating work is safe.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;

use crate::membership::claimant::gains;
use crate::membership::gossip::Membership;
use crate::net::PartitionSource;
use crate::ring::{NodeId, PartitionId};
use crate::storage::{Budget, Store};
use crate::throttle::Throttle;
use crate::worker::{Worker, WorkerState};

/// Most keys per page of a partition stream (pages are also cut at a byte budget).
const PAGE_ITEMS: usize = 256;

/// Progress of one partition moving to this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    pub from: String,
    pub to: String,
    pub keys: u64,
    pub bytes: u64,
    pub state: TransferState,
    /// When streaming started, and how long it took once done: the transfer's rate.
    pub started: Option<std::time::Instant>,
    pub took: Option<Duration>,
}

impl Transfer {
    /// Bytes per second since streaming started (over the whole transfer once done).
    pub fn bytes_per_second(&self) -> u64 {
        let elapsed = match (self.took, self.started) {
            (Some(took), _) => took,
            (None, Some(started)) => started.elapsed(),
            (None, None) => return 0,
        };
        (self.bytes as f64 / elapsed.as_secs_f64().max(1e-3)) as u64
    }
}

/// How far one partition transfer got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferState {
    /// Not started.
    Pending,
    /// Pages are being pulled.
    Streaming,
    /// Every page was pulled and merged.
    Done,
}

/// Transfers of the current layout change, as this node sees them.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    pub epoch: u64,
    pub partitions: BTreeMap<PartitionId, Transfer>,
}

/// Pulls every partition this node gains, checking every 300 ms.
pub struct TransferWorker<N> {
    membership: Arc<Membership>,
    store: Arc<Store>,
    net: Arc<N>,
    /// Replicas per key.
    n: usize,
    throttle: Throttle,
    /// Shared with the admin service, which reports it.
    progress: Arc<Mutex<Progress>>,
    /// What one page of a partition stream may hold.
    page: Budget,
}

impl<N> TransferWorker<N> {
    pub fn new(
        membership: Arc<Membership>,
        store: Arc<Store>,
        net: Arc<N>,
        n: usize,
        per_second: u32,
        page_bytes: usize,
        progress: Arc<Mutex<Progress>>,
    ) -> Self {
        TransferWorker {
            membership,
            store,
            net,
            n,
            throttle: Throttle::new(per_second),
            progress,
            page: Budget { items: PAGE_ITEMS, bytes: page_bytes },
        }
    }
}

impl<N: PartitionSource> Worker for TransferWorker<N> {
    fn name(&self) -> &'static str {
        "transfer"
    }

    fn wait(&self) -> Duration {
        Duration::from_millis(300)
    }

    fn step(&mut self) -> BoxFuture<'_, WorkerState> {
        Box::pin(self.pass())
    }
}

impl<N: PartitionSource> TransferWorker<N> {
    /// One pass over the partitions this node gains in the layout change under way, if any.
    async fn pass(&mut self) -> WorkerState {
        let TransferWorker { membership, store, net, n, throttle, progress, page } = self;
        let page = *page;
        let n = *n;
        let me = membership.me().clone();
        let placement = membership.placement().borrow().clone();
        let (Some(current), Some(next)) = (&placement.current, &placement.next) else {
            return WorkerState::Idle;
        };
        let synced = membership.view().nodes.get(&me).map_or(0, |s| s.synced_epoch);
        if synced >= placement.epoch {
            return WorkerState::Idle;
        }
        let mine = gains(current, next, n).remove(&me).unwrap_or_default();
        {
            let mut p = progress.lock().unwrap_or_else(|e| e.into_inner());
            if p.epoch != placement.epoch {
                *p = Progress { epoch: placement.epoch, partitions: BTreeMap::new() };
                for partition in &mine {
                    p.partitions.insert(
                        *partition,
                        Transfer {
                            from: String::new(),
                            to: me.0.clone(),
                            keys: 0,
                            bytes: 0,
                            state: TransferState::Pending,
                            started: None,
                            took: None,
                        },
                    );
                }
            }
        }
        let mut all_done = true;
        for partition in mine {
            let done = progress
                .lock()
                .map(|p| {
                    p.partitions.get(&partition).is_some_and(|t| t.state == TransferState::Done)
                })
                .unwrap_or(false);
            if done {
                continue;
            }
            // Sources: the partition's current replicas, reachable ones first.
            let mut sources: Vec<NodeId> =
                current.replicas(partition, n).into_iter().filter(|id| *id != me).collect();
            sources.sort_by_key(|id| !net.is_up(id));
            let mut pulled = false;
            for source in sources {
                let result = pull(
                    store,
                    &**net,
                    membership,
                    placement.epoch,
                    partition,
                    &source,
                    progress,
                    throttle,
                    page,
                )
                .await;
                match result {
                    Ok(()) => {
                        pulled = true;
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(partition, %source, error = %e, "partition pull failed; trying another source")
                    }
                }
            }
            if !pulled {
                all_done = false;
            }
        }
        if all_done && membership.placement().borrow().epoch == placement.epoch {
            tracing::info!(
                epoch = placement.epoch,
                "received every partition of the layout change"
            );
            if let Err(e) = membership.update_self(|s| s.synced_epoch = placement.epoch) {
                tracing::warn!(error = %e, "cannot record the transfer as done");
            }
        }
        WorkerState::Busy
    }
}

#[allow(clippy::too_many_arguments)]
async fn pull<N: PartitionSource>(
    store: &Store,
    net: &N,
    membership: &Membership,
    epoch: u64,
    partition: PartitionId,
    source: &NodeId,
    progress: &Mutex<Progress>,
    throttle: &mut Throttle,
    budget: Budget,
) -> Result<(), String> {
    let set = |f: &dyn Fn(&mut Transfer)| {
        if let Ok(mut p) = progress.lock() {
            if let Some(t) = p.partitions.get_mut(&partition) {
                f(t);
            }
        }
    };
    set(&|t| {
        t.from = source.0.clone();
        t.state = TransferState::Streaming;
        t.keys = 0;
        t.bytes = 0;
        t.started = Some(std::time::Instant::now());
        t.took = None;
    });
    let mut after: Option<Vec<u8>> = None;
    loop {
        if membership.placement().borrow().epoch != epoch {
            return Err("the layout changed during the transfer".into());
        }
        let page = net
            .stream_partition(source, partition, after.clone(), budget)
            .await
            .map_err(|e| e.to_string())?;
        for (key, clock, size) in &page.entries {
            throttle.acquire().await;
            store.merge(partition, key, clock).map_err(|e| e.to_string())?;
            crate::metrics::METRICS.transfer_keys.inc();
            crate::metrics::METRICS.transfer_bytes.inc_by(*size as u64);
            set(&|t| {
                t.keys += 1;
                t.bytes += *size as u64;
            });
        }
        match page.entries.last() {
            Some((key, _, _)) if !page.done => after = Some(key.clone()),
            _ => break,
        }
    }
    set(&|t| {
        t.state = TransferState::Done;
        t.took = t.started.map(|s| s.elapsed());
    });
    Ok(())
}
