//! Wiring: opens storage, builds the ring, connects peers, serves the gRPC services and gRPC
//! health, and stops cleanly when the shutdown token is cancelled.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;

use crate::config::{EngineKind, NodeConfig};
use crate::coordinator::{Coordinator, Settings};
use crate::handoff::transfer::Progress;
use crate::membership::gossip::{Membership, MembershipConfig};
use crate::membership::view::Status;
use crate::ring::NodeId;
use crate::rpc::pb::admin::admin_server::AdminServer;
use crate::rpc::pb::client::client_server::ClientServer;
use crate::rpc::pb::internode::internode_server::InternodeServer;
use crate::rpc::peers::Peers;
use crate::rpc::service::{AdminService, ClientService, InternodeService, Shared};
use crate::rpc::MAX_MESSAGE_BYTES;
use crate::storage::{Engine, MemoryEngine, RocksEngine, Store};
use crate::version::ContextSealer;

/// Secret used when none is configured. Contexts are then still checked for corruption and
/// key mix-ups, but anyone who reads this source could forge one.
const DEFAULT_SECRET: &str = "dynamo-default-context-secret";

pub use dynamo_api::contract::READY_SERVICE;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open storage: {0}")]
    Storage(String),
    #[error("cannot listen on {address}: {source} (is another process using this port?)")]
    Listen { address: String, source: std::io::Error },
    #[error("gRPC server failed: {0}")]
    Serve(String),
}

/// Runs a node until `shutdown` is cancelled.
pub async fn run(config: NodeConfig, shutdown: CancellationToken) -> Result<(), StartError> {
    let engine: Arc<dyn Engine> = match config.engine {
        EngineKind::Rocksdb => {
            let dir =
                config.data_dir.clone().ok_or_else(|| StartError::Storage("no data_dir".into()))?;
            Arc::new(
                RocksEngine::open(&dir, config.sync_writes)
                    .map_err(|e| StartError::Storage(e.0))?,
            )
        }
        EngineKind::Memory => Arc::new(MemoryEngine::default()),
    };
    let store = Arc::new(
        Store::open(engine, config.cluster.partitions)
            .map_err(|e| StartError::Storage(e.to_string()))?,
    );
    let me = NodeId(config.id.clone());
    let timeout = Duration::from_millis(config.request_timeout_ms);
    let peers = Arc::new(Peers::new(me.clone(), timeout));
    let quorum = config.quorum();
    let membership = Membership::start(
        MembershipConfig {
            me: config.member(),
            address: config.advertise_addr().to_string(),
            seeds: config.seeds.clone(),
            partitions: config.cluster.partitions,
            n: quorum.n,
            gossip_interval: Duration::from_millis(config.gossip_interval_ms),
            // Long enough to hear from the other seeds before creating a ring alone.
            bootstrap_after: Duration::from_millis(config.gossip_interval_ms * 3),
        },
        store.clone(),
        peers.clone(),
    )
    .map_err(|e| StartError::Storage(e.to_string()))?;
    let settings = Settings {
        n: quorum.n,
        r: quorum.r,
        w: quorum.w,
        timeout,
        limits: config.limits.clone(),
        partitions: config.cluster.partitions,
    };
    let secret = if config.cluster.secret.is_empty() {
        tracing::warn!("no cluster secret configured: contexts can be forged; set cluster.secret");
        DEFAULT_SECRET
    } else {
        config.cluster.secret.as_str()
    };
    let coordinator = Arc::new(Coordinator::new(
        me.clone(),
        settings,
        membership.placement(),
        store.clone(),
        peers.clone(),
        ContextSealer::new(secret.as_bytes()),
    ));
    let progress = Arc::new(std::sync::Mutex::new(Progress::default()));
    let shared = Arc::new(Shared {
        coordinator,
        peers,
        cluster: config.cluster.name.clone(),
        address: config.advertise_addr().to_string(),
        quorum,
        fault_injection: config.fault_injection,
        membership: membership.clone(),
        progress: progress.clone(),
    });

    let mut workers = tokio::task::JoinSet::new();
    let bg = &config.background;
    workers.spawn(crate::membership::run_prober(shared.peers.clone(), shutdown.clone()));
    workers.spawn(membership.clone().run(shutdown.clone()));
    workers.spawn(crate::handoff::transfer::run(
        membership.clone(),
        store.clone(),
        shared.peers.clone(),
        quorum.n,
        bg.transfer_keys_per_sec,
        progress,
        shutdown.clone(),
    ));
    let router: crate::handoff::Router = {
        let membership = membership.clone();
        let n = quorum.n;
        Arc::new(move |target: &NodeId| {
            // A target that left never comes back: its hints go to the current replicas, once
            // no layout change is under way (so "current" is where the data lives).
            let left = membership.status_of(target) == Some(Status::Left);
            let placement = membership.placement().borrow().clone();
            match (&placement.current, &placement.next) {
                (Some(ring), None) if left => {
                    crate::handoff::Route::Replicas { ring: Arc::new(ring.clone()), n }
                }
                _ => crate::handoff::Route::Target,
            }
        })
    };
    workers.spawn(crate::handoff::run(
        store.clone(),
        shared.peers.clone(),
        membership.me().clone(),
        router,
        Duration::from_millis(bg.handoff_interval_ms),
        bg.handoff_keys_per_sec,
        shutdown.clone(),
    ));
    if bg.cleanup_after_ms > 0 {
        workers.spawn(crate::handoff::cleanup::run(
            membership.clone(),
            store.clone(),
            quorum.n,
            Duration::from_millis(bg.cleanup_after_ms),
            shutdown.clone(),
        ));
    }
    if bg.anti_entropy_interval_ms > 0 {
        workers.spawn(crate::antientropy::run(
            shared.coordinator.clone(),
            Duration::from_millis(bg.anti_entropy_interval_ms),
            bg.anti_entropy_keys_per_sec,
            shutdown.clone(),
        ));
    }

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<ClientServer<ClientService>>().await;
    workers.spawn(report_readiness(membership.clone(), health, shutdown.clone()));

    let listener = TcpListener::bind(&config.listen)
        .await
        .map_err(|source| StartError::Listen { address: config.listen.clone(), source })?;
    tracing::info!(
        node = %me,
        listen = %config.listen,
        actor = format!("{:016x}", store.actor()),
        seeds = ?config.seeds,
        n = quorum.n, r = quorum.r, w = quorum.w,
        "serving"
    );
    Server::builder()
        .tcp_nodelay(true)
        .add_service(health_service)
        .add_service(
            ClientServer::new(ClientService(shared.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            InternodeServer::new(InternodeService(shared.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(AdminServer::new(AdminService(shared)))
        // With our own listener the builder's tcp_nodelay is ignored: set it per connection, or
        // Nagle holds back the second write of a response for the peer's delayed ACK (~40 ms).
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown.cancelled(),
        )
        .await
        .map_err(|e| StartError::Serve(e.to_string()))?;
    // Every worker watches the same token; give them a moment to finish what they are doing.
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while workers.join_next().await.is_some() {}
    })
    .await;
    tracing::info!(node = %me, "stopped");
    Ok(())
}

/// Keeps the readiness health service (`dynamo.ready`) SERVING exactly while this node is a
/// member of the ring (normal or leaving), so Kubernetes counts a pod ready only once joined.
async fn report_readiness(
    membership: Arc<Membership>,
    health: tonic_health::server::HealthReporter,
    shutdown: CancellationToken,
) {
    let mut last = None;
    loop {
        let ready = matches!(membership.status(), Status::Normal | Status::Leaving);
        if last != Some(ready) {
            let status = if ready {
                tonic_health::ServingStatus::Serving
            } else {
                tonic_health::ServingStatus::NotServing
            };
            health.set_service_status(READY_SERVICE, status).await;
            last = Some(ready);
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

/// A token cancelled on SIGINT or SIGTERM: the one shutdown signal every task watches.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    // Detached on purpose: lives for the whole process; its only job is to cancel the token.
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutdown signal received");
        t.cancel();
    });
    token
}
