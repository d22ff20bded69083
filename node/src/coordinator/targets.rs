//! Sloppy quorum (paper section 4.6): which nodes a request goes to. The first N *healthy*
//! nodes of the preference list: every top-N node this node considers up, and for each one it
//! considers down, the next healthy node past the first N, carrying a hint that names the node
//! it stands in for. Pure.

use std::collections::VecDeque;

use crate::ring::NodeId;

/// One node a request is sent to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub node: NodeId,
    /// The top-N node this one stands in for (sloppy quorum), if any.
    pub hint_for: Option<NodeId>,
}

/// Targets for a request, plus the healthy stand-ins left over, in preference order, for
/// replacing targets that fail during the request.
pub fn select(
    preference: &[NodeId],
    n: usize,
    me: &NodeId,
    is_up: impl Fn(&NodeId) -> bool,
) -> (Vec<Target>, VecDeque<NodeId>) {
    let n = n.min(preference.len());
    let mut spares: VecDeque<NodeId> =
        preference[n..].iter().filter(|p| *p == me || is_up(p)).cloned().collect();
    let targets = preference[..n]
        .iter()
        .map(|node| {
            if node == me || is_up(node) {
                return Target { node: node.clone(), hint_for: None };
            }
            match spares.pop_front() {
                Some(stand_in) => Target { node: stand_in, hint_for: Some(node.clone()) },
                // No healthy node left to stand in: try the intended one anyway.
                None => Target { node: node.clone(), hint_for: None },
            }
        })
        .collect();
    (targets, spares)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(names: &[&str]) -> Vec<NodeId> {
        names.iter().map(|n| NodeId(n.to_string())).collect()
    }

    fn t(node: &str, hint: Option<&str>) -> Target {
        Target { node: NodeId(node.into()), hint_for: hint.map(|h| NodeId(h.into())) }
    }

    #[test]
    fn all_up_means_the_first_n_without_hints() {
        let (targets, spares) =
            select(&ids(&["a", "b", "c", "d", "e"]), 3, &NodeId("a".into()), |_| true);
        assert_eq!(targets, vec![t("a", None), t("b", None), t("c", None)]);
        assert_eq!(spares, ids(&["d", "e"]));
    }

    #[test]
    fn a_down_replica_is_replaced_by_the_next_healthy_node_with_a_hint() {
        let up = |n: &NodeId| n.0 != "b" && n.0 != "d";
        let (targets, spares) =
            select(&ids(&["a", "b", "c", "d", "e"]), 3, &NodeId("a".into()), up);
        assert_eq!(targets, vec![t("a", None), t("e", Some("b")), t("c", None)]);
        assert!(spares.is_empty());
    }

    #[test]
    fn without_stand_ins_the_down_node_is_still_tried() {
        let (targets, _) = select(&ids(&["a", "b", "c"]), 3, &NodeId("a".into()), |n| n.0 != "c");
        assert_eq!(targets, vec![t("a", None), t("b", None), t("c", None)]);
    }
}
