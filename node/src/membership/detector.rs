//! Local failure detection (paper section 4.8.3): a node considers a peer down when the peer
//! does not answer it, whatever other nodes think, skips it while it is down, and probes it
//! again periodically. Fed by every internode call's outcome and by gossip. Pure: time is an
//! input, so it is tested without sleeping.
//!
//! Being down here never changes partition ownership; it only makes coordinators pick stand-ins
//! (sloppy quorum) and hint deliverers wait.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::ring::NodeId;

#[derive(Debug, Clone)]
struct Down {
    since: Instant,
    error: String,
    next_probe: Instant,
}

/// See the module docs.
#[derive(Debug, Clone)]
pub struct FailureDetector {
    /// Peers currently considered down. Absent means up (including never contacted).
    down: HashMap<NodeId, Down>,
    /// How long after a failure (or a failed probe) a down peer is probed again.
    retry: Duration,
}

impl FailureDetector {
    pub fn new(retry: Duration) -> FailureDetector {
        FailureDetector { down: HashMap::new(), retry }
    }

    /// The peer answered: it is up.
    pub fn record_success(&mut self, peer: &NodeId) {
        self.down.remove(peer);
    }

    /// The peer did not answer (unreachable or timed out): it is down until a probe succeeds.
    pub fn record_failure(&mut self, peer: &NodeId, error: &str, now: Instant) {
        let next_probe = now + self.retry;
        self.down
            .entry(peer.clone())
            .and_modify(|d| {
                d.error = error.to_string();
                d.next_probe = next_probe;
            })
            .or_insert(Down { since: now, error: error.to_string(), next_probe });
    }

    pub fn is_up(&self, peer: &NodeId) -> bool {
        !self.down.contains_key(peer)
    }

    /// How long `peer` has been down (since the first failure without a success since).
    pub fn down_for(&self, peer: &NodeId, now: Instant) -> Option<Duration> {
        self.down.get(peer).map(|d| now.saturating_duration_since(d.since))
    }

    /// Down peers whose probe is due; each is scheduled again `retry` later, so a probe that
    /// never returns does not cause a storm.
    pub fn due_probes(&mut self, now: Instant) -> Vec<NodeId> {
        let mut due = Vec::new();
        for (peer, d) in self.down.iter_mut() {
            if d.next_probe <= now {
                d.next_probe = now + self.retry;
                due.push(peer.clone());
            }
        }
        due.sort();
        due
    }

    /// Every down peer with how long it has been down and the last error.
    pub fn down_peers(&self, now: Instant) -> Vec<(NodeId, Duration, String)> {
        let mut v: Vec<_> = self
            .down
            .iter()
            .map(|(p, d)| (p.clone(), now.saturating_duration_since(d.since), d.error.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> NodeId {
        NodeId(s.into())
    }

    #[test]
    fn failure_marks_down_until_success() {
        let t0 = Instant::now();
        let mut d = FailureDetector::new(Duration::from_secs(1));
        assert!(d.is_up(&id("a")), "unknown peers are presumed up");
        d.record_failure(&id("a"), "refused", t0);
        assert!(!d.is_up(&id("a")));
        assert!(d.is_up(&id("b")), "one peer's failure says nothing about another");
        d.record_success(&id("a"));
        assert!(d.is_up(&id("a")));
    }

    #[test]
    fn down_for_counts_from_the_first_failure_until_a_success() {
        let t0 = Instant::now();
        let mut d = FailureDetector::new(Duration::from_secs(1));
        assert_eq!(d.down_for(&id("a"), t0), None);
        d.record_failure(&id("a"), "refused", t0);
        d.record_failure(&id("a"), "timed out", t0 + Duration::from_secs(3));
        assert_eq!(d.down_for(&id("a"), t0 + Duration::from_secs(7)), Some(Duration::from_secs(7)));
        d.record_success(&id("a"));
        d.record_failure(&id("a"), "refused", t0 + Duration::from_secs(8));
        assert_eq!(d.down_for(&id("a"), t0 + Duration::from_secs(9)), Some(Duration::from_secs(1)));
    }

    #[test]
    fn probes_are_due_after_the_retry_interval_and_rescheduled() {
        let t0 = Instant::now();
        let mut d = FailureDetector::new(Duration::from_secs(1));
        d.record_failure(&id("a"), "refused", t0);
        assert!(d.due_probes(t0 + Duration::from_millis(999)).is_empty());
        assert_eq!(d.due_probes(t0 + Duration::from_secs(1)), vec![id("a")]);
        assert!(d.due_probes(t0 + Duration::from_millis(1500)).is_empty(), "rescheduled");
        assert_eq!(d.due_probes(t0 + Duration::from_secs(2)), vec![id("a")]);
        let down = d.down_peers(t0 + Duration::from_secs(5));
        assert_eq!(down, vec![(id("a"), Duration::from_secs(5), "refused".to_string())]);
    }
}
