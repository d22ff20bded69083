//! Read repair decisions: after a get, which replicas hold less than the merged version and
//! must be sent it. Pure.

use crate::ring::NodeId;
use crate::version::Clock;

/// The replicas whose reply is not the merged clock of all replies. Since `merged` is the sync
/// of every reply, each reply is dominated by it; any difference means the replica is stale
/// (an empty clock means the replica lacked the key altogether).
pub fn stale_replicas<'a>(replies: &'a [(NodeId, Clock)], merged: &Clock) -> Vec<&'a NodeId> {
    replies.iter().filter(|(_, clock)| clock != merged).map(|(node, _)| node).collect()
}

/// The sync of every reply: what the get returns and what stale replicas are repaired to.
pub fn merge_replies<'a, T: 'a>(replies: impl IntoIterator<Item = &'a (T, Clock)>) -> Clock {
    replies.into_iter().fold(Clock::new(), |acc, (_, clock)| acc.sync(clock))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::{Value, VersionVector};

    fn write(base: &Clock, v: &str, actor: u64) -> Clock {
        base.update(&base.context(), Value::Data(v.as_bytes().to_vec()), actor)
    }

    #[test]
    fn missing_and_older_replicas_are_repaired_current_ones_are_not() {
        let v1 = write(&Clock::new(), "v1", 1);
        let v2 = write(&v1, "v2", 1);
        let replies = vec![
            (NodeId("a".into()), v2.clone()),
            (NodeId("b".into()), v1.clone()),
            (NodeId("c".into()), Clock::new()),
        ];
        let merged = merge_replies(&replies);
        assert_eq!(merged, v2);
        let stale: Vec<_> = stale_replicas(&replies, &merged).into_iter().cloned().collect();
        assert_eq!(stale, [NodeId("b".into()), NodeId("c".into())]);
    }

    #[test]
    fn concurrent_versions_repair_every_replica_to_the_siblings() {
        let a = Clock::new().update(&VersionVector::default(), Value::Data(b"x".to_vec()), 1);
        let b = Clock::new().update(&VersionVector::default(), Value::Data(b"y".to_vec()), 2);
        let replies = vec![(NodeId("a".into()), a), (NodeId("b".into()), b)];
        let merged = merge_replies(&replies);
        assert_eq!(merged.sibling_count(), 2);
        assert_eq!(stale_replicas(&replies, &merged).len(), 2);
    }

    #[test]
    fn agreeing_replicas_need_no_repair() {
        let v = write(&Clock::new(), "v", 3);
        let replies = vec![(NodeId("a".into()), v.clone()), (NodeId("b".into()), v)];
        assert!(stale_replicas(&replies, &merge_replies(&replies)).is_empty());
    }
}
