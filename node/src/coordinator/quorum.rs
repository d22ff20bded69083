//! Quorum bookkeeping for one request: which replicas answered, which failed, and whether the
//! request has succeeded, can still succeed, or cannot ([`QuorumTracker`]); and the same over
//! several replica sets at once, for writes during a layout change ([`ManySets`]). Pure; the
//! driver feeds it replies.

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

/// A write's quorum over several replica sets (Garage's `try_write_many_sets`): W
/// acknowledgements among the current replicas it was sent to (and their stand-ins) AND W
/// within each extra set (during a layout change: the replicas of the next layout, so that
/// nothing acknowledged is left behind when ownership flips). An acknowledgement counts in
/// every set its node belongs to, and only there: a node of the next layout alone does not
/// make up the current replicas' W, or a read of the current replicas could miss the write.
/// Reached when every requirement is, impossible as soon as one is.
#[derive(Debug, Clone)]
pub struct ManySets {
    sent: (Vec<NodeId>, QuorumTracker),
    sets: Vec<(Vec<NodeId>, QuorumTracker)>,
}

impl ManySets {
    /// `w` of the `sent` nodes (the current replicas the write goes to), and `w` of each of
    /// `sets` (an empty set is ignored).
    pub fn new(w: usize, sent: Vec<NodeId>, sets: Vec<Vec<NodeId>>) -> ManySets {
        let sets = sets
            .into_iter()
            .filter(|s| !s.is_empty())
            .map(|s| {
                let t = QuorumTracker::new(w, s.len());
                (s, t)
            })
            .collect();
        let tracker = QuorumTracker::new(w, sent.len());
        ManySets { sent: (sent, tracker), sets }
    }

    /// One more node was sent the write in place of a current replica that failed (a
    /// stand-in, which keeps it as a hint): it counts towards the current replicas' W.
    pub fn add_target(&mut self, node: &NodeId) {
        self.sent.0.push(node.clone());
        self.sent.1.add_target();
    }

    fn sets_of<'a>(
        &'a mut self,
        node: &'a NodeId,
    ) -> impl Iterator<Item = &'a mut QuorumTracker> + 'a {
        std::iter::once(&mut self.sent)
            .chain(self.sets.iter_mut())
            .filter(move |(members, _)| members.contains(node))
            .map(|(_, t)| t)
    }

    /// Records an acknowledgement, in every set the node belongs to.
    pub fn succeeded(&mut self, node: &NodeId) {
        for t in self.sets_of(node) {
            t.succeeded(node.clone());
        }
    }

    /// Records a failure, in every set the node belongs to.
    pub fn failed(&mut self, node: &NodeId, reason: &str) {
        for t in self.sets_of(node) {
            t.failed(node.clone(), reason.to_string());
        }
    }

    pub fn state(&self) -> QuorumState {
        let states = std::iter::once(&self.sent.1).chain(self.sets.iter().map(|(_, t)| t));
        let mut all = QuorumState::Reached;
        for state in states.map(QuorumTracker::state) {
            match state {
                QuorumState::Impossible => return QuorumState::Impossible,
                QuorumState::Waiting => all = QuorumState::Waiting,
                QuorumState::Reached => {}
            }
        }
        all
    }

    /// The tracker of the current replicas (and stand-ins) the write was sent to.
    pub fn sent(&self) -> &QuorumTracker {
        &self.sent.1
    }

    /// The first requirement not reached (for the error message); the sent nodes' when all
    /// were reached.
    pub fn missed(&self) -> &QuorumTracker {
        std::iter::once(&self.sent.1)
            .chain(self.sets.iter().map(|(_, t)| t))
            .find(|t| t.state() != QuorumState::Reached)
            .unwrap_or(&self.sent.1)
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

    #[test]
    fn a_write_during_a_layout_change_needs_w_in_each_set() {
        // Sent to a, b, c (current replicas); the next layout's replicas are c, d, e.
        let sent = || vec![id("a"), id("b"), id("c")];
        let mut q = ManySets::new(2, sent(), vec![vec![id("c"), id("d"), id("e")], vec![]]);
        q.succeeded(&id("a"));
        q.succeeded(&id("b"));
        assert_eq!(q.state(), QuorumState::Waiting, "W of the sent nodes is not enough");
        assert_eq!(q.missed().required(), 2);
        assert_eq!(q.missed().successes(), 0, "the next set is the one missed");
        q.succeeded(&id("c"));
        assert_eq!(q.state(), QuorumState::Waiting);
        q.failed(&id("d"), "refused");
        assert_eq!(q.state(), QuorumState::Waiting);
        q.failed(&id("e"), "refused");
        assert_eq!(q.state(), QuorumState::Impossible, "the next set cannot reach W");
        assert_eq!(q.sent().successes(), 3);

        let mut q = ManySets::new(2, sent(), vec![vec![id("c"), id("d"), id("e")]]);
        for n in ["a", "c", "d"] {
            q.succeeded(&id(n));
        }
        assert_eq!(q.state(), QuorumState::Reached);

        // Current a, b, c; next a, d, e: acks of a and d make W=2 in the next set but only one
        // current replica holds the write, so a read of b and c would miss it: not reached.
        let mut q = ManySets::new(2, sent(), vec![vec![id("a"), id("d"), id("e")]]);
        q.succeeded(&id("a"));
        q.succeeded(&id("d"));
        assert_eq!(q.state(), QuorumState::Waiting);
        assert_eq!(q.sent().successes(), 1, "d is not a current replica");
        // A stand-in for a failed current replica counts for the current set.
        q.failed(&id("b"), "refused");
        q.add_target(&id("f"));
        q.succeeded(&id("f"));
        assert_eq!(q.state(), QuorumState::Reached);
        assert_eq!(q.sent().successes(), 2);

        // Without extra sets it is a plain quorum.
        let mut q = ManySets::new(1, vec![id("a")], vec![]);
        q.succeeded(&id("a"));
        assert_eq!(q.state(), QuorumState::Reached);
    }
}
