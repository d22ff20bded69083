//! The node context (as Garage's `Garage` struct): one value owning the storage, the ring view
//! (through membership) and the network, from which every component receives what it needs;
//! no component reaches storage through another. It also starts the background workers, all
//! under one [`Runner`].

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;

use crate::antientropy::{AntiEntropy, AntiEntropyWorker};
use crate::config::NodeConfig;
use crate::coordinator::{Coordinator, Settings};
use crate::error::Result;
use crate::handoff::cleanup::CleanupWorker;
use crate::handoff::transfer::{Progress, TransferState, TransferWorker};
use crate::handoff::{membership_router, HintWorker};
use crate::membership::gossip::{GossipWorker, Membership, MembershipConfig};
use crate::membership::view::Status;
use crate::membership::Prober;
use crate::net::Net;
use crate::ring::NodeId;
use crate::rpc::faults::FaultSwitch;
use crate::rpc::peers::ClusterIdentity;
use crate::rpc::service::Shared;
use crate::storage::Store;
use crate::version::ContextSealer;
use crate::worker::{Runner, Statuses, Worker, WorkerState};
use dynamo_api::security::Credentials;

pub use dynamo_api::contract::READY_SERVICE;

/// Secret used when none is configured. Contexts are then still checked for corruption and
/// key mix-ups, but anyone who reads this source could forge one.
const DEV_SECRET: &str = "dynamo-default-context-secret";

/// See the module docs.
pub struct Node<N> {
    pub me: NodeId,
    pub config: NodeConfig,
    /// This node's replicas, hints and Merkle trees.
    pub store: Arc<Store>,
    /// Calls to the other nodes (the gRPC peers, possibly behind the fault-injection decorator).
    pub net: Arc<N>,
    /// The gossiped view and the placement (ring view) derived from it.
    pub membership: Arc<Membership>,
    pub coordinator: Arc<Coordinator<N>>,
    pub antientropy: Arc<AntiEntropy<N>>,
    /// Partitions moving to this node in the current layout change (transfer worker -> admin).
    pub progress: Arc<Mutex<Progress>>,
    /// The test-only fault switch, when fault injection is enabled.
    pub faults: Option<Arc<FaultSwitch>>,
}

impl<N: Net> Node<N> {
    /// Builds the components over `store` and `net`; loads the persisted membership view.
    pub fn new(
        config: NodeConfig,
        store: Arc<Store>,
        net: Arc<N>,
        faults: Option<Arc<FaultSwitch>>,
    ) -> Result<Node<N>> {
        let me = NodeId(config.id.clone());
        let quorum = config.quorum();
        let membership = Membership::start(
            MembershipConfig {
                me: config.member(),
                address: config.peer_advertise_addr(),
                client_address: config.advertise_addr().to_string(),
                metrics_address: config.metrics_advertise_addr(),
                seeds: config.seeds.clone(),
                partitions: config.cluster.partitions,
                n: quorum.n,
                gossip_interval: Duration::from_millis(config.gossip_interval_ms),
                // Long enough to hear from the other seeds before creating a ring alone.
                bootstrap_after: Duration::from_millis(config.gossip_interval_ms * 3),
            },
            store.clone(),
            net.clone(),
        )?;
        let settings = Settings {
            n: quorum.n,
            r: quorum.r,
            w: quorum.w,
            timeout: Duration::from_millis(config.request_timeout_ms),
            limits: config.limits.clone(),
            partitions: config.cluster.partitions,
            hint_window: Duration::from_millis(config.background.hint_window_ms),
        };
        // Only development mode may leave the secret empty (the configuration refuses it otherwise).
        let secret = if config.cluster.secret.is_empty() {
            tracing::warn!(
                "development mode without a cluster secret: contexts are sealed with a built-in \
                 key anyone can use to forge them; set cluster.secret"
            );
            DEV_SECRET
        } else {
            config.cluster.secret.as_str()
        };
        let coordinator = Arc::new(Coordinator::new(
            me.clone(),
            settings,
            membership.placement(),
            store.clone(),
            net.clone(),
            ContextSealer::new(secret.as_bytes()),
        ));
        let antientropy = Arc::new(AntiEntropy::new(
            me.clone(),
            quorum.n,
            store.clone(),
            net.clone(),
            membership.placement(),
        ));
        Ok(Node {
            me,
            config,
            store,
            net,
            membership,
            coordinator,
            antientropy,
            progress: Arc::new(Mutex::new(Progress::default())),
            faults,
        })
    }

    /// What the gRPC services need.
    pub fn shared(
        &self,
        workers: Statuses,
        cluster: ClusterIdentity,
        credentials: Credentials,
    ) -> Arc<Shared<N>> {
        Arc::new(Shared {
            me: self.me.clone(),
            store: self.store.clone(),
            net: self.net.clone(),
            coordinator: self.coordinator.clone(),
            membership: self.membership.clone(),
            antientropy: self.antientropy.clone(),
            cluster,
            credentials,
            quorum: self.config.quorum(),
            partitions: self.config.cluster.partitions,
            faults: self.faults.clone(),
            progress: self.progress.clone(),
            workers,
            data_dir: match self.config.engine {
                crate::config::EngineKind::Rocksdb => self.config.data_dir.clone(),
                crate::config::EngineKind::Memory => None,
            },
        })
    }

    /// The node's state for one scrape of `/metrics`: membership, ring, peers seen down, hints
    /// held, transfers under way, storage engine figures.
    pub fn sample(&self) -> crate::metrics::Sample {
        let view = self.membership.view();
        let states = [Status::Joining, Status::Normal, Status::Leaving, Status::Left];
        let members = states
            .iter()
            .map(|s| (s.as_str(), view.nodes.values().filter(|n| n.status == *s).count() as u64))
            .collect();
        let peers_down = view
            .nodes
            .values()
            .filter(|n| n.id != self.me && n.status != Status::Left && !self.net.is_up(&n.id))
            .count() as u64;
        let placement = self.coordinator.placement();
        let n = self.config.quorum().n;
        let partitions_owned = placement
            .current
            .as_ref()
            .map_or(0, |ring| ring.replica_partitions(&self.me, n).len() as u64);
        let hints = self
            .store
            .hint_stats()
            .into_iter()
            .map(|(target, s)| (target.0, s.count, s.bytes))
            .collect();
        let transfers_in_progress = self
            .progress
            .lock()
            .map(|p| {
                p.partitions.values().filter(|t| t.state != TransferState::Done).count() as u64
            })
            .unwrap_or(0);
        crate::metrics::Sample {
            node: self.me.0.clone(),
            zone: self.config.zone.clone(),
            members,
            ring_epoch: placement.epoch,
            partitions_owned,
            peers_down,
            hints,
            transfers_in_progress,
            storage: self.store.engine_stats(),
        }
    }

    /// Starts every background worker on `runner`; `health` is told when this node is ready.
    pub fn start_workers(&self, runner: &mut Runner, health: tonic_health::server::HealthReporter) {
        let bg = &self.config.background;
        let n = self.config.quorum().n;
        runner.spawn(Prober(self.net.clone()));
        runner.spawn(GossipWorker::new(self.membership.clone()));
        runner.spawn(TransferWorker::new(
            self.membership.clone(),
            self.store.clone(),
            self.net.clone(),
            n,
            bg.transfer_keys_per_sec,
            bg.page_bytes,
            self.progress.clone(),
        ));
        runner.spawn(HintWorker::new(
            self.store.clone(),
            self.net.clone(),
            self.me.clone(),
            membership_router(self.membership.clone(), n),
            Duration::from_millis(bg.handoff_interval_ms),
            bg.handoff_keys_per_sec,
        ));
        if bg.cleanup_after_ms > 0 {
            runner.spawn(CleanupWorker::new(
                self.membership.clone(),
                self.store.clone(),
                n,
                Duration::from_millis(bg.cleanup_after_ms),
                runner.shutdown(),
            ));
        }
        if bg.anti_entropy_interval_ms > 0 {
            runner.spawn(AntiEntropyWorker::new(
                self.antientropy.clone(),
                Duration::from_millis(bg.anti_entropy_interval_ms),
                bg.anti_entropy_keys_per_sec,
            ));
        }
        if bg.reap_interval_ms > 0 {
            runner.spawn(crate::reap::ReapWorker::new(
                self.membership.clone(),
                self.store.clone(),
                self.net.clone(),
                n,
                Duration::from_millis(bg.delete_grace_ms),
                Duration::from_millis(bg.reap_interval_ms),
                bg.reap_keys_per_sec,
            ));
        }
        runner.spawn(Readiness { membership: self.membership.clone(), health, last: None });
    }
}

/// Keeps the readiness health service (`dynamo.ready`) SERVING exactly while this node is a
/// member of the ring (normal or leaving), so Kubernetes counts a pod ready only once joined.
struct Readiness {
    membership: Arc<Membership>,
    health: tonic_health::server::HealthReporter,
    /// What was last reported (`None` before the first report).
    last: Option<bool>,
}

impl Worker for Readiness {
    fn name(&self) -> &'static str {
        "readiness"
    }

    fn wait(&self) -> Duration {
        // The first report goes out at once.
        if self.last.is_none() {
            Duration::ZERO
        } else {
            Duration::from_millis(200)
        }
    }

    fn step(&mut self) -> BoxFuture<'_, WorkerState> {
        Box::pin(async move {
            let ready = matches!(self.membership.status(), Status::Normal | Status::Leaving);
            if self.last == Some(ready) {
                return WorkerState::Idle;
            }
            let status = if ready {
                tonic_health::ServingStatus::Serving
            } else {
                tonic_health::ServingStatus::NotServing
            };
            self.health.set_service_status(READY_SERVICE, status).await;
            self.last = Some(ready);
            WorkerState::Busy
        })
    }
}
