//! Test-only fault injection (the `SetFaults` admin call), kept out of every production path:
//! a [`FaultSwitch`] names the peers this node is cut off from; [`Faulty`] wraps the network so
//! calls to them fail as unreachable (as a real partition would look, and fed to the failure
//! detector the same way), and [`FaultSwitch::interceptor`] refuses calls from them on the
//! internode server. Both are installed only when the node runs with `fault_injection = true`.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::future::BoxFuture;
use tonic::{Request, Status};

use crate::merkle::Hash;
use crate::net::{
    ForwardedPut, Gossip, ItemsPage, Liveness, Merkle, PartitionPage, PartitionSource, PeerError,
    PeerIdentity, PutOutcome, Replicas,
};
use crate::ring::{NodeId, PartitionId};
use crate::storage::Budget;
use crate::version::Clock;

/// The peers this node is cut off from, in both directions.
#[derive(Debug, Default)]
pub struct FaultSwitch {
    blocked: RwLock<HashSet<NodeId>>,
}

impl FaultSwitch {
    /// Replaces the set of peers cut off.
    pub fn set_blocked(&self, peers: HashSet<NodeId>) {
        if let Ok(mut b) = self.blocked.write() {
            *b = peers;
        }
    }

    /// Whether this node is cut off from `peer`.
    pub fn is_blocked(&self, peer: &str) -> bool {
        self.blocked.read().map(|b| b.iter().any(|p| p.0 == peer)).unwrap_or(false)
    }

    /// A tonic interceptor for the internode server: calls from a blocked peer (named by the
    /// caller-id metadata) get a bare UNAVAILABLE, without the node-error marker, so the caller
    /// sees a transport failure (a lost connection), never an answer of this node. (The
    /// harness blocks both sides, so the caller's own [`Faulty`] normally refuses first.)
    pub fn interceptor(
        self: &Arc<Self>,
    ) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone + Send + Sync + 'static
    {
        let switch = self.clone();
        move |req: Request<()>| {
            let from = req.metadata().get(super::peers::FROM_KEY).and_then(|v| v.to_str().ok());
            match from {
                Some(peer) if switch.is_blocked(peer) => {
                    Err(Status::unavailable("partitioned (fault injection)"))
                }
                _ => Ok(req),
            }
        }
    }
}

/// A network whose calls to blocked peers fail at once as unreachable. See the module docs.
pub struct Faulty<N> {
    inner: N,
    switch: Arc<FaultSwitch>,
}

impl<N: Liveness> Faulty<N> {
    pub fn new(inner: N, switch: Arc<FaultSwitch>) -> Faulty<N> {
        Faulty { inner, switch }
    }

    /// Refuses a call to a blocked peer, recording it with the failure detector as a real
    /// unreachable peer would be.
    fn check(&self, to: &NodeId) -> Result<(), PeerError> {
        if !self.switch.is_blocked(&to.0) {
            return Ok(());
        }
        let e = PeerError::Unreachable("partitioned (fault injection)".into());
        self.inner.lost(to, &e.to_string());
        Err(e)
    }
}

impl<N: Liveness> Liveness for Faulty<N> {
    fn is_up(&self, node: &NodeId) -> bool {
        self.inner.is_up(node)
    }

    fn heard_from(&self, node: &NodeId) {
        self.inner.heard_from(node)
    }

    fn lost(&self, node: &NodeId, error: &str) {
        self.inner.lost(node, error)
    }

    fn down_for(&self, node: &NodeId) -> Option<Duration> {
        self.inner.down_for(node)
    }

    fn due_probes(&self) -> Vec<NodeId> {
        self.inner.due_probes()
    }

    fn ping<'a>(
        &'a self,
        to: &'a NodeId,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<PeerIdentity, PeerError>> {
        match self.check(to) {
            Ok(()) => self.inner.ping(to, timeout),
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }
}

impl<N: Replicas> Replicas for Faulty<N> {
    async fn replicate(
        &self,
        to: &NodeId,
        key: &[u8],
        clock: &Clock,
        hint_for: Option<&NodeId>,
    ) -> Result<(), PeerError> {
        self.check(to)?;
        self.inner.replicate(to, key, clock, hint_for).await
    }

    async fn fetch(
        &self,
        to: &NodeId,
        key: &[u8],
        hint_for: Option<&NodeId>,
    ) -> Result<Clock, PeerError> {
        self.check(to)?;
        self.inner.fetch(to, key, hint_for).await
    }

    async fn coordinate_put(
        &self,
        to: &NodeId,
        put: ForwardedPut,
    ) -> Result<PutOutcome, PeerError> {
        self.check(to)?;
        self.inner.coordinate_put(to, put).await
    }
}

impl<N: Merkle + Liveness> Merkle for Faulty<N> {
    async fn merkle_hashes(
        &self,
        to: &NodeId,
        partition: PartitionId,
        level: u32,
        indices: Vec<u32>,
    ) -> Result<Vec<Hash>, PeerError> {
        self.check(to)?;
        self.inner.merkle_hashes(to, partition, level, indices).await
    }

    async fn merkle_items(
        &self,
        to: &NodeId,
        partition: PartitionId,
        leaves: Vec<u32>,
        after: Option<Vec<u8>>,
        budget: Budget,
    ) -> Result<ItemsPage, PeerError> {
        self.check(to)?;
        self.inner.merkle_items(to, partition, leaves, after, budget).await
    }
}

impl<N: PartitionSource> PartitionSource for Faulty<N> {
    async fn stream_partition(
        &self,
        from: &NodeId,
        partition: PartitionId,
        after: Option<Vec<u8>>,
        budget: Budget,
    ) -> Result<PartitionPage, PeerError> {
        self.check(from)?;
        self.inner.stream_partition(from, partition, after, budget).await
    }
}

impl<N: Gossip> Gossip for Faulty<N> {
    fn set_addresses(&self, members: &[(NodeId, String)]) {
        self.inner.set_addresses(members)
    }

    fn gossip<'a>(
        &'a self,
        to: Option<&'a NodeId>,
        address: &'a str,
        view: Vec<u8>,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Vec<u8>, PeerError>> {
        // Not fed to the failure detector: gossip never is (a seed may be no member).
        if to.is_some_and(|id| self.switch.is_blocked(&id.0)) {
            let e = PeerError::Unreachable("partitioned (fault injection)".into());
            return Box::pin(std::future::ready(Err(e)));
        }
        self.inner.gossip(to, address, view, timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::sim::SimNet;
    use crate::storage::{MemoryEngine, Store};

    fn id(s: &str) -> NodeId {
        NodeId(s.into())
    }

    #[tokio::test]
    async fn calls_to_blocked_peers_fail_as_unreachable_and_mark_them_down() {
        let net = SimNet::new(8);
        for n in ["b", "c"] {
            net.add(&id(n), Arc::new(Store::open(Arc::new(MemoryEngine::default()), 8).unwrap()));
        }
        let switch = Arc::new(FaultSwitch::default());
        let faulty = Faulty::new(net, switch.clone());
        switch.set_blocked(HashSet::from([id("b")]));
        let err = faulty.fetch(&id("b"), b"k", None).await.unwrap_err();
        assert!(matches!(err, PeerError::Unreachable(_)), "{err}");
        assert!(!faulty.is_up(&id("b")), "the detector learns of it");
        assert!(faulty.fetch(&id("c"), b"k", None).await.is_ok(), "others are reached");
        switch.set_blocked(HashSet::new());
        assert!(faulty.fetch(&id("b"), b"k", None).await.is_ok(), "healed");
        assert!(faulty.is_up(&id("b")));
    }

    #[test]
    fn the_interceptor_refuses_blocked_callers_without_the_node_error_marker() {
        let switch = Arc::new(FaultSwitch::default());
        switch.set_blocked(HashSet::from([id("b")]));
        let mut intercept = switch.interceptor();
        let from = |peer: &str| {
            let mut r = Request::new(());
            r.metadata_mut().insert(super::super::peers::FROM_KEY, peer.parse().unwrap());
            r
        };
        let refused = intercept(from("b")).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unavailable);
        assert!(!crate::rpc::status::is_node_error(&refused));
        assert!(intercept(from("c")).is_ok());
        assert!(intercept(Request::new(())).is_ok(), "clients send no caller id");
    }
}
