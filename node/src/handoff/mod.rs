//! Hinted handoff (paper section 4.6): a stand-in periodically scans the hints it holds and
//! hands each one to the node it was meant for once that node answers; a hint is deleted only
//! after the owner acknowledged it (and only if no newer write was hinted meanwhile). Paced by
//! a throttle so a node coming back is not flooded (no hinted-handoff storms).

pub mod transfer;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::coordinator::Transport;
use crate::storage::Store;
use crate::throttle::Throttle;

/// Hints per page read from storage.
const PAGE: usize = 128;

/// What one delivery pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DeliveryStats {
    pub delivered: u64,
    /// Targets skipped because a delivery to them failed this pass.
    pub unreachable: Vec<String>,
}

/// One pass over every target's hints.
pub async fn deliver_once<T: Transport>(
    store: &Store,
    transport: &T,
    throttle: &mut Throttle,
) -> DeliveryStats {
    let mut stats = DeliveryStats::default();
    for target in store.hint_stats().into_keys() {
        let mut after: Option<(u32, Vec<u8>)> = None;
        'target: loop {
            let page = match store.hints_for(
                &target,
                after.as_ref().map(|(p, k)| (*p, k.as_slice())),
                PAGE,
            ) {
                Ok(page) => page,
                Err(e) => {
                    tracing::warn!(%target, error = %e, "cannot read hints");
                    break;
                }
            };
            let Some(last) = page.last() else { break };
            after = Some((last.0, last.1.clone()));
            for (partition, key, clock) in page {
                throttle.acquire().await;
                match transport.replicate(&target, &key, &clock, None).await {
                    Ok(()) => {
                        match store.remove_hint_if_unchanged(&target, partition, &key, &clock) {
                            Ok(true) => stats.delivered += 1,
                            Ok(false) => {}
                            Err(e) => {
                                tracing::warn!(%target, error = %e, "cannot remove a delivered hint")
                            }
                        }
                    }
                    Err(e) => {
                        tracing::debug!(%target, error = %e, "hint delivery failed; will retry");
                        stats.unreachable.push(target.0.clone());
                        break 'target;
                    }
                }
            }
        }
    }
    if stats.delivered > 0 {
        tracing::info!(delivered = stats.delivered, "hints handed off");
    }
    stats
}

/// Delivers hints every `interval` until `shutdown`.
pub async fn run<T: Transport>(
    store: Arc<Store>,
    transport: Arc<T>,
    interval: Duration,
    per_second: u32,
    shutdown: CancellationToken,
) {
    let mut throttle = Throttle::new(per_second);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = deliver_once(&store, &*transport, &mut throttle) => {}
        }
    }
}
