//! Wiring: opens storage, connects peers over mutual TLS (behind the fault-injection decorator
//! when enabled), builds the node context, starts its workers, serves the gRPC services on
//! three ports (client API over TLS; internode and admin APIs over TLS; plaintext gRPC health
//! for probes) behind the authorization layer (`rpc::auth`), serves Prometheus metrics on a
//! fourth (plain HTTP), and stops cleanly when the shutdown token is cancelled.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

use dynamo_api::security::{Credentials, Role, Tokens};

use crate::config::{EngineKind, NodeConfig};
use crate::net::Net;
use crate::node::Node;
use crate::ring::NodeId;
use crate::rpc::admission::Admission;
use crate::rpc::auth::{Policy, TokenFileWorker};
use crate::rpc::faults::{FaultSwitch, Faulty};
use crate::rpc::gate::GateLayer;
use crate::rpc::pb::admin::admin_server::AdminServer;
use crate::rpc::pb::client::client_server::ClientServer;
use crate::rpc::pb::internode::internode_server::InternodeServer;
use crate::rpc::peers::{ClusterIdentity, Peers};
use crate::rpc::service::{AdminService, ClientService, InternodeService};
use crate::rpc::MAX_MESSAGE_BYTES;
use crate::storage::{Engine, MemoryEngine, RocksEngine, Store, StoreCaps};
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
    #[error("{0}")]
    Security(String),
}

/// Runs a node until `shutdown` is cancelled.
pub async fn run(config: NodeConfig, shutdown: CancellationToken) -> Result<(), StartError> {
    let (engine, dir): (Arc<dyn Engine>, _) = match config.engine {
        EngineKind::Rocksdb => {
            let dir =
                config.data_dir.clone().ok_or_else(|| StartError::Storage("no data_dir".into()))?;
            let engine = RocksEngine::open(&dir, config.sync_writes)
                .map_err(|e| StartError::Storage(e.0))?;
            (Arc::new(engine), Some(dir))
        }
        EngineKind::Memory => (Arc::new(MemoryEngine::default()), None),
    };
    let store = Arc::new(
        Store::open_in(engine, config.cluster.partitions, dir.as_deref())
            .map_err(|e| StartError::Storage(e.to_string()))?
            .with_caps(StoreCaps {
                hint_bytes_per_target: config.background.max_hint_bytes_per_target,
                ..StoreCaps::from_limits(&config.limits)
            }),
    );
    // The TLS files are read once, here.
    let security = Security::load(&config)?;
    let me = NodeId(config.id.clone());
    let peers = Peers::new(
        me,
        Duration::from_millis(config.request_timeout_ms),
        security.credentials.clone(),
        security.cluster.clone(),
    );
    // Test-only fault injection wraps the network; production nodes run on the bare peers.
    if config.fault_injection {
        let switch = Arc::new(FaultSwitch::default());
        let net = Arc::new(Faulty::new(peers, switch.clone()));
        serve(config, security, store, net, Some(switch), shutdown).await
    } else {
        serve(config, security, store, Arc::new(peers), None, shutdown).await
    }
}

/// Builds the node over `net`, starts its workers and serves until `shutdown`.
async fn serve<N: Net>(
    config: NodeConfig,
    security: Security,
    store: Arc<Store>,
    net: Arc<N>,
    faults: Option<Arc<FaultSwitch>>,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    let tls = server_tls(&security.credentials);
    let policy = Arc::new(Policy::new(config.is_insecure(), tokens(&config)?));
    let admission = Arc::new(Admission::new(
        config.limits.max_concurrent_requests,
        config.limits.max_concurrent_background,
    ));
    let node = Arc::new(
        Node::new(config, store, net, faults).map_err(|e| StartError::Storage(e.to_string()))?,
    );
    let config = &node.config;
    let mut runner = Runner::new(shutdown.clone());
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<ClientServer<ClientService<N>>>().await;
    node.start_workers(&mut runner, health);
    if let (Some(path), false) = (&config.tokens_file, config.is_insecure()) {
        runner.spawn(TokenFileWorker::new(path.clone(), policy.clone()));
    }
    let shared = node.shared(runner.statuses(), security.cluster, security.credentials);

    let client_listener = listen(&config.listen).await?;
    let peer_listener = listen(&config.peer_listen).await?;
    let health_listener = listen(&config.health_listen).await?;
    let metrics_listener = listen(&config.metrics_listen).await?;
    let quorum = config.quorum();
    tracing::info!(
        node = %node.me,
        listen = %config.listen,
        peer_listen = %config.peer_listen,
        health_listen = %config.health_listen,
        metrics_listen = %config.metrics_listen,
        tls = tls.is_some(),
        actor = format!("{:016x}", node.store.actor()),
        fresh_actor = ?node.store.fresh_actor(),
        seeds = ?config.seeds,
        n = quorum.n, r = quorum.r, w = quorum.w,
        "serving"
    );
    if tls.is_none() {
        tracing::warn!(
            "running with --dev --insecure: every port is plaintext and every call is accepted \
             without a credential; never do this with data that matters"
        );
    }
    let builder = || -> Result<_, StartError> {
        let builder = Server::builder().tcp_nodelay(true);
        let builder = match &tls {
            Some(tls) => builder.tls_config(tls.clone()).map_err(|e| {
                StartError::Security(format!("the TLS settings are not usable: {e}"))
            })?,
            None => builder,
        };
        // Who may call comes first; then whether there is room for the call.
        Ok(builder.layer(GateLayer(policy.clone())).layer(GateLayer(admission.clone())))
    };
    let limits = RequestLimits::of(config);
    // Client port: the client API (and health).
    let client_router = builder()?.add_service(health_service.clone()).add_service(
        ClientServer::new(ClientService(shared.clone()))
            .max_decoding_message_size(limits.client)
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
    );
    // Peer port: internode and admin APIs (and health).
    let internode = InternodeServer::new(InternodeService(shared.clone()))
        .max_decoding_message_size(limits.internode)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let peer_router = builder()?.add_service(health_service.clone()).add_service(
        AdminServer::new(AdminService(shared))
            .max_decoding_message_size(limits.admin)
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
    );
    let peer_router = match &node.faults {
        // Incoming calls from peers cut off by the fault switch are refused before any handler.
        Some(switch) => {
            peer_router.add_service(InterceptedService::new(internode, switch.interceptor()))
        }
        None => peer_router.add_service(internode),
    };
    // Health port: plaintext gRPC health only, for probes.
    let health_router = Server::builder().add_service(health_service);
    // If one server fails, the others stop too.
    let stop = shutdown.child_token();
    let failed = |e: tonic::transport::Error| {
        stop.cancel();
        StartError::Serve(e.to_string())
    };
    // With our own listener the builder's tcp_nodelay is ignored: set it per connection, or
    // Nagle holds back the second write of a response for the peer's delayed ACK (~40 ms).
    let incoming = |l: TcpListener| TcpIncoming::from(l).with_nodelay(Some(true));
    let sampler: crate::metrics::http::Sampler = {
        let node = node.clone();
        Arc::new(move || node.sample())
    };
    let (client, peer, health, metrics) = tokio::join!(
        async {
            client_router
                .serve_with_incoming_shutdown(incoming(client_listener), stop.cancelled())
                .await
                .map_err(failed)
        },
        async {
            peer_router
                .serve_with_incoming_shutdown(incoming(peer_listener), stop.cancelled())
                .await
                .map_err(failed)
        },
        async {
            health_router
                .serve_with_incoming_shutdown(incoming(health_listener), stop.cancelled())
                .await
                .map_err(failed)
        },
        async {
            crate::metrics::http::serve(metrics_listener, sampler, stop.clone()).await.map_err(
                |e| {
                    stop.cancel();
                    StartError::Serve(format!("metrics endpoint: {e}"))
                },
            )
        },
    );
    // Every worker watches the same token; give them a moment to finish what they are doing.
    shutdown.cancel();
    runner.drain(DRAIN_DEADLINE).await;
    // Only now may the next start on this directory keep the actor (storage::lineage).
    if let Err(e) = node.store.stop_cleanly() {
        tracing::warn!(error = %e, "could not record a clean stop: the next start takes a fresh actor");
    }
    client?;
    peer?;
    health?;
    metrics?;
    tracing::info!(node = %node.me, "stopped");
    Ok(())
}

/// The largest request each API accepts, from the node's limits. A larger one is refused
/// (`OUT_OF_RANGE`, naming the limit) from its length prefix, before anything is allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    /// A put: one value, its key and its context.
    pub client: usize,
    /// A replicated version (up to the merge caps), or a forwarded put.
    pub internode: usize,
    /// Admin requests are small.
    pub admin: usize,
}

/// Room for a key's context and the message framing.
const REQUEST_OVERHEAD: usize = 64 << 10;

impl RequestLimits {
    pub fn of(config: &NodeConfig) -> RequestLimits {
        let l = &config.limits;
        RequestLimits {
            client: l.max_value_bytes + l.max_key_bytes + REQUEST_OVERHEAD,
            internode: (StoreCaps::from_limits(l).bytes + l.max_key_bytes + REQUEST_OVERHEAD)
                .min(MAX_MESSAGE_BYTES),
            admin: REQUEST_OVERHEAD,
        }
    }
}

async fn listen(address: &str) -> Result<TcpListener, StartError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| StartError::Listen { address: address.to_string(), source })
}

/// The servers' TLS settings: this node's certificate, and the cluster CA for the callers'
/// certificates (optional at the handshake; each method's rule is checked in `rpc::auth`).
/// None with `--dev --insecure` (credentials without a CA).
fn server_tls(credentials: &Credentials) -> Option<ServerTlsConfig> {
    let (Some(ca), Some((cert, key))) = (&credentials.ca_pem, &credentials.identity) else {
        return None;
    };
    Some(
        ServerTlsConfig::new()
            .identity(Identity::from_pem(cert, key))
            .client_ca_root(Certificate::from_pem(ca))
            .client_auth_optional(true),
    )
}

/// The node's TLS material, read once at start: what it presents, and its cluster's identity.
struct Security {
    credentials: Credentials,
    cluster: ClusterIdentity,
}

impl Security {
    fn load(config: &NodeConfig) -> Result<Security, StartError> {
        let credentials = node_credentials(config)?;
        let ca_fingerprint = match &credentials.ca_pem {
            Some(ca) => dynamo_api::security::fingerprint(ca)
                .map_err(|e| StartError::Security(format!("tls.ca_cert: {e}")))?,
            None => String::new(),
        };
        let cluster = ClusterIdentity { name: config.cluster.name.clone(), ca_fingerprint };
        Ok(Security { credentials, cluster })
    }
}

/// What this node presents when it calls the others: the cluster CA, its own certificate
/// (which must have role peer). Plaintext with `--dev --insecure`.
pub fn node_credentials(config: &NodeConfig) -> Result<Credentials, StartError> {
    if config.is_insecure() {
        return Ok(Credentials::insecure());
    }
    let tls = &config.tls;
    let credentials =
        Credentials::load(tls.ca_cert.as_deref(), tls.cert.as_deref(), tls.key.as_deref(), None)
            .map_err(|e| StartError::Security(e.to_string()))?;
    let (cert, _) = credentials
        .identity
        .as_ref()
        .ok_or_else(|| StartError::Security("tls.cert and tls.key are required".into()))?;
    let der = dynamo_api::security::first_certificate(cert)
        .map_err(|e| StartError::Security(format!("tls.cert: {e}")))?;
    match dynamo_api::security::identity_of(&der) {
        Some(id) if id.role == Role::Peer => Ok(credentials),
        Some(id) => Err(StartError::Security(format!(
            "tls.cert: the certificate has role {}, but a node's certificate needs role peer \
             (issue it with the cluster CA for the node)",
            id.role
        ))),
        None => Err(StartError::Security(
            "tls.cert: the certificate names no role (urn:dynamokv:role:peer): issue the \
             node's certificate with the operator or `dynamoctl dev up`"
                .into(),
        )),
    }
}

fn tokens(config: &NodeConfig) -> Result<Tokens, StartError> {
    match &config.tokens_file {
        Some(path) if !config.is_insecure() => {
            Tokens::load(path).map_err(|e| StartError::Security(format!("tokens_file: {e}")))
        }
        _ => Ok(Tokens::default()),
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
