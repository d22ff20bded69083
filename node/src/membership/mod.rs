//! Membership and failure detection (paper section 4.8): the gossiped view (`view`), layout
//! decisions (`claimant`), the gossip driver (`gossip`), and local failure detection
//! (`detector`) with the prober that revives peers marked down.

pub mod claimant;
pub mod detector;
pub mod gossip;
pub mod view;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::rpc::peers::{Peers, PROBE_INTERVAL};

/// Pings every down peer whose probe is due, until `shutdown`; an answer marks it up again.
pub async fn run_prober(peers: Arc<Peers>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(PROBE_INTERVAL / 2) => {}
        }
        for peer in peers.due_probes() {
            // The outcome feeds the detector inside `ping`.
            if peers.ping(&peer, Duration::from_millis(500)).await.is_ok() {
                tracing::info!(%peer, "peer is reachable again");
            }
        }
    }
}
