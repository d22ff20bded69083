//! Quorum bookkeeping for one request: which replicas answered, which failed, and whether the
//! request has succeeded, can still succeed, or cannot. Pure; the driver feeds it replies.

use crate::ring::NodeId;

/// Where a request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuorumState {
    /// Fewer than `required` successes so far, but enough replicas are still outstanding.
    Waiting,
    /// At least `required` replicas succeeded.
    Reached,
    /// So many replicas failed that `required` successes are no longer possible.
    Impossible,
}

/// Counts replies from the `total` replicas a request was sent to.
#[derive(Debug, Clone)]
pub struct QuorumTracker {
    required: usize,
    total: usize,
    ok: Vec<NodeId>,
    failed: Vec<(NodeId, String)>,
}

impl QuorumTracker {
    /// `required` successes needed out of `total` replicas asked.
    pub fn new(required: usize, total: usize) -> QuorumTracker {
        QuorumTracker { required, total, ok: Vec::new(), failed: Vec::new() }
    }

    /// One more replica was asked (a stand-in replacing one that failed).
    pub fn add_target(&mut self) {
        self.total += 1;
    }

    /// Records a success. A replica counts once, however often it answers.
    pub fn succeeded(&mut self, node: NodeId) -> QuorumState {
        if !self.ok.contains(&node) && !self.failed.iter().any(|(n, _)| *n == node) {
            self.ok.push(node);
        }
        self.state()
    }

    /// Records a failure with its reason.
    pub fn failed(&mut self, node: NodeId, reason: String) -> QuorumState {
        if !self.ok.contains(&node) && !self.failed.iter().any(|(n, _)| *n == node) {
            self.failed.push((node, reason));
        }
        self.state()
    }

    pub fn state(&self) -> QuorumState {
        if self.ok.len() >= self.required {
            QuorumState::Reached
        } else if self.total - self.failed.len().min(self.total) < self.required {
            QuorumState::Impossible
        } else {
            QuorumState::Waiting
        }
    }

    /// How many replicas have answered successfully.
    pub fn successes(&self) -> usize {
        self.ok.len()
    }

    pub fn required(&self) -> usize {
        self.required
    }

    pub fn total(&self) -> usize {
        self.total
    }

    /// "node: reason" for every failure, plus the replicas that never answered (given the full
    /// list asked), for error messages.
    pub fn explain(&self, asked: &[NodeId]) -> Vec<String> {
        let mut out: Vec<String> = self.failed.iter().map(|(n, e)| format!("{n}: {e}")).collect();
        for n in asked {
            if !self.ok.contains(n) && !self.failed.iter().any(|(f, _)| f == n) {
                out.push(format!("{n}: no answer in time"));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> NodeId {
        NodeId(s.into())
    }

    #[test]
    fn reached_after_required_successes() {
        let mut q = QuorumTracker::new(2, 3);
        assert_eq!(q.succeeded(id("a")), QuorumState::Waiting);
        assert_eq!(q.succeeded(id("a")), QuorumState::Waiting, "duplicates do not count");
        assert_eq!(q.failed(id("b"), "down".into()), QuorumState::Waiting);
        assert_eq!(q.succeeded(id("c")), QuorumState::Reached);
    }

    #[test]
    fn impossible_as_soon_as_too_many_fail() {
        let mut q = QuorumTracker::new(2, 3);
        assert_eq!(q.failed(id("a"), "refused".into()), QuorumState::Waiting);
        assert_eq!(q.failed(id("b"), "refused".into()), QuorumState::Impossible);
        assert_eq!(
            q.explain(&[id("a"), id("b"), id("c")]),
            [
                "a: refused".to_string(),
                "b: refused".to_string(),
                "c: no answer in time".to_string()
            ]
        );
    }

    #[test]
    fn quorum_of_all_needs_every_replica() {
        let mut q = QuorumTracker::new(3, 3);
        q.succeeded(id("a"));
        q.succeeded(id("b"));
        assert_eq!(q.state(), QuorumState::Waiting);
        assert_eq!(q.failed(id("c"), "x".into()), QuorumState::Impossible);
    }
}
