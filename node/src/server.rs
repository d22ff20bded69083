//! Wiring: opens storage, connects peers (behind the fault-injection decorator when enabled),
//! builds the node context, starts its workers, serves the gRPC services and gRPC health, and
//! stops cleanly when the shutdown token is cancelled.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;

use crate::config::{EngineKind, NodeConfig};
use crate::net::Net;
use crate::node::Node;
use crate::ring::NodeId;
use crate::rpc::faults::{FaultSwitch, Faulty};
use crate::rpc::pb::admin::admin_server::AdminServer;
use crate::rpc::pb::client::client_server::ClientServer;
use crate::rpc::pb::internode::internode_server::InternodeServer;
use crate::rpc::peers::Peers;
use crate::rpc::service::{AdminService, ClientService, InternodeService};
use crate::rpc::MAX_MESSAGE_BYTES;
use crate::storage::{Engine, MemoryEngine, RocksEngine, Store};
use crate::worker::Runner;

/// How long workers get to stop after the server did.
const DRAIN_DEADLINE: Duration = Duration::from_secs(5);

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
    let peers = Peers::new(me, Duration::from_millis(config.request_timeout_ms));
    // Test-only fault injection wraps the network; production nodes run on the bare peers.
    if config.fault_injection {
        let switch = Arc::new(FaultSwitch::default());
        let net = Arc::new(Faulty::new(peers, switch.clone()));
        serve(config, store, net, Some(switch), shutdown).await
    } else {
        serve(config, store, Arc::new(peers), None, shutdown).await
    }
}

/// Builds the node over `net`, starts its workers and serves until `shutdown`.
async fn serve<N: Net>(
    config: NodeConfig,
    store: Arc<Store>,
    net: Arc<N>,
    faults: Option<Arc<FaultSwitch>>,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    let node =
        Node::new(config, store, net, faults).map_err(|e| StartError::Storage(e.to_string()))?;
    let config = &node.config;
    let mut runner = Runner::new(shutdown.clone());
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<ClientServer<ClientService<N>>>().await;
    node.start_workers(&mut runner, health);
    let shared = node.shared(runner.statuses());

    let listener = TcpListener::bind(&config.listen)
        .await
        .map_err(|source| StartError::Listen { address: config.listen.clone(), source })?;
    let quorum = config.quorum();
    tracing::info!(
        node = %node.me,
        listen = %config.listen,
        actor = format!("{:016x}", node.store.actor()),
        seeds = ?config.seeds,
        n = quorum.n, r = quorum.r, w = quorum.w,
        "serving"
    );
    let internode = InternodeServer::new(InternodeService(shared.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let router = Server::builder()
        .tcp_nodelay(true)
        .add_service(health_service)
        .add_service(
            ClientServer::new(ClientService(shared.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(AdminServer::new(AdminService(shared)));
    let router = match &node.faults {
        // Incoming calls from peers cut off by the fault switch are refused before any handler.
        Some(switch) => {
            router.add_service(InterceptedService::new(internode, switch.interceptor()))
        }
        None => router.add_service(internode),
    };
    // With our own listener the builder's tcp_nodelay is ignored: set it per connection, or
    // Nagle holds back the second write of a response for the peer's delayed ACK (~40 ms).
    let served = router
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown.cancelled(),
        )
        .await
        .map_err(|e| StartError::Serve(e.to_string()));
    // Every worker watches the same token; give them a moment to finish what they are doing.
    runner.drain(DRAIN_DEADLINE).await;
    served?;
    tracing::info!(node = %node.me, "stopped");
    Ok(())
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
