//! Membership and failure detection (paper section 4.8): the gossiped view (`view`), layout
//! decisions (`claimant`), the gossip driver (`gossip`), and local failure detection
//! (`detector`) with the prober that revives peers marked down.

pub mod claimant;
pub mod detector;
pub mod gossip;
pub mod view;

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use crate::net::Liveness;
use crate::worker::{Worker, WorkerState};

/// How long after a failure a down peer is probed again.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// Pings every down peer whose probe is due; an answer marks it up again (the outcome feeds
/// the failure detector inside `ping`).
pub struct Prober<N>(pub Arc<N>);

impl<N: Liveness> Worker for Prober<N> {
    fn name(&self) -> &'static str {
        "prober"
    }

    fn wait(&self) -> Duration {
        PROBE_INTERVAL / 2
    }

    fn step(&mut self) -> BoxFuture<'_, WorkerState> {
        Box::pin(async move {
            let due = self.0.due_probes();
            if due.is_empty() {
                return WorkerState::Idle;
            }
            for peer in due {
                if self.0.ping(&peer, Duration::from_millis(500)).await.is_ok() {
                    tracing::info!(%peer, "peer is reachable again");
                }
            }
            WorkerState::Busy
        })
    }
}
