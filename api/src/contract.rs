//! The node's fixed names, shared by the node, its clients and the operator, so none of them
//! keeps a copy that can drift: the port, the gRPC health service names, the environment
//! variables `dynamo-node` reads, the metadata keys on its calls, and the message size limit.

use std::time::Duration;

/// The port a node serves the client API on by default (TLS; clients' credentials).
pub const DEFAULT_PORT: u16 = 7070;

/// The port a node serves the internode and admin APIs on by default (mutual TLS): a
/// NetworkPolicy lets only the cluster's nodes and its operator reach it.
pub const DEFAULT_PEER_PORT: u16 = 7071;

/// The port a node serves gRPC health on by default, in plaintext and without credentials, for
/// kubelet probes (which speak neither TLS nor tokens); it serves nothing else.
pub const DEFAULT_HEALTH_PORT: u16 = 7072;

/// The port a node serves Prometheus metrics on by default (plain HTTP, `GET /metrics`).
pub const DEFAULT_METRICS_PORT: u16 = 9090;

/// Metadata key of a bearer token: `authorization: Bearer <token>`.
pub const AUTHORIZATION_KEY: &str = "authorization";

/// gRPC health service name that is SERVING once the node has joined the ring (readiness).
pub const READY_SERVICE: &str = "dynamo.ready";

/// gRPC health service name that is SERVING while the process serves the client API
/// (liveness). The empty name is gRPC's "whole server".
pub const LIVE_SERVICE: &str = "";

/// Metadata key set on every error status produced by a node (value: the error kind), so a
/// caller can tell a node's own answer from a transport failure with the same gRPC code.
pub const ERROR_KIND_KEY: &str = "dynamo-error";

/// Metadata key on every client API response: the answering node's layout epoch (decimal). A
/// partition-aware client that routes with an older ring fetches the ring again.
pub const EPOCH_KEY: &str = "dynamo-epoch";

/// Metadata key naming the calling node on internode calls.
pub const FROM_KEY: &str = "dynamo-from";

/// Largest gRPC message accepted or sent: a whole object (every sibling) plus headroom.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// How long a new TCP connection to a node may take before the node counts as unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Environment variables `dynamo-node` reads (each overrides the same setting of its TOML file;
/// see `dynamo-node --help`).
pub mod env {
    pub const CONFIG: &str = "DYNAMO_CONFIG";
    pub const ID: &str = "DYNAMO_ID";
    pub const LISTEN: &str = "DYNAMO_LISTEN";
    pub const ADVERTISE: &str = "DYNAMO_ADVERTISE";
    pub const ZONE: &str = "DYNAMO_ZONE";
    pub const WEIGHT: &str = "DYNAMO_WEIGHT";
    pub const DATA_DIR: &str = "DYNAMO_DATA_DIR";
    pub const ENGINE: &str = "DYNAMO_ENGINE";
    pub const SEEDS: &str = "DYNAMO_SEEDS";
    pub const GOSSIP_INTERVAL_MS: &str = "DYNAMO_GOSSIP_INTERVAL_MS";
    pub const CLUSTER_NAME: &str = "DYNAMO_CLUSTER_NAME";
    pub const CLUSTER_SECRET: &str = "DYNAMO_CLUSTER_SECRET";
    pub const PARTITIONS: &str = "DYNAMO_PARTITIONS";
    pub const N: &str = "DYNAMO_N";
    pub const R: &str = "DYNAMO_R";
    pub const W: &str = "DYNAMO_W";
    pub const REQUEST_TIMEOUT_MS: &str = "DYNAMO_REQUEST_TIMEOUT_MS";
    pub const SYNC_WRITES: &str = "DYNAMO_SYNC_WRITES";
    pub const FAULT_INJECTION: &str = "DYNAMO_FAULT_INJECTION";
    pub const PEER_LISTEN: &str = "DYNAMO_PEER_LISTEN";
    pub const PEER_ADVERTISE: &str = "DYNAMO_PEER_ADVERTISE";
    pub const HEALTH_LISTEN: &str = "DYNAMO_HEALTH_LISTEN";
    pub const METRICS_LISTEN: &str = "DYNAMO_METRICS_LISTEN";
    pub const TLS_CA_CERT: &str = "DYNAMO_TLS_CA_CERT";
    pub const TLS_CERT: &str = "DYNAMO_TLS_CERT";
    pub const TLS_KEY: &str = "DYNAMO_TLS_KEY";
    pub const TOKENS_FILE: &str = "DYNAMO_TOKENS_FILE";
    pub const DEV: &str = "DYNAMO_DEV";
    pub const INSECURE: &str = "DYNAMO_INSECURE";

    /// Every variable above: anything else starting with `DYNAMO_` is not read by the node.
    pub const ALL: &[&str] = &[
        CONFIG,
        ID,
        LISTEN,
        ADVERTISE,
        ZONE,
        WEIGHT,
        DATA_DIR,
        ENGINE,
        SEEDS,
        GOSSIP_INTERVAL_MS,
        CLUSTER_NAME,
        CLUSTER_SECRET,
        PARTITIONS,
        N,
        R,
        W,
        REQUEST_TIMEOUT_MS,
        SYNC_WRITES,
        FAULT_INJECTION,
        PEER_LISTEN,
        PEER_ADVERTISE,
        HEALTH_LISTEN,
        METRICS_LISTEN,
        TLS_CA_CERT,
        TLS_CERT,
        TLS_KEY,
        TOKENS_FILE,
        DEV,
        INSECURE,
    ];
}

/// Opens a lazily connected gRPC channel to a node at `address` (HOST:PORT), with the
/// connection settings every caller of a node uses (TLS with `credentials`' CA and certificate,
/// connect timeout, per-call timeout, no Nagle delay, HTTP/2 keep-alive). A token in
/// `credentials` is not added here: see `Credentials::authorize`.
pub fn channel(
    address: &str,
    request_timeout: Duration,
    credentials: &crate::security::Credentials,
) -> Result<tonic::transport::Channel, String> {
    let endpoint = credentials
        .endpoint(address)
        .map_err(|e| format!("'{address}' is not a valid address: {e}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(request_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    Ok(endpoint.connect_lazy())
}

/// True when the status was produced by a dynamo node (not by the transport).
pub fn is_node_error(status: &tonic::Status) -> bool {
    status.metadata().contains_key(ERROR_KIND_KEY)
}

/// Whether a failed call never reached the node: the connection could not be made (refused,
/// no route, connect timeout), which tonic reports as a [`tonic::ConnectError`] in the error's
/// chain. Any other transport failure (a connection reset or closed after the request was
/// sent) may have reached the node, so a write that failed that way may have been applied and
/// must not be sent to another node.
pub fn never_connected(status: &tonic::Status) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(e) = cause {
        if e.downcast_ref::<tonic::ConnectError>().is_some() {
            return true;
        }
        cause = e.source();
    }
    false
}

/// The most specific cause of a transport failure ("Connection refused" rather than
/// "transport error").
pub fn transport_cause(status: &tonic::Status) -> String {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    let mut last = status.message().to_string();
    while let Some(e) = cause {
        last = e.to_string();
        cause = e.source();
    }
    if last.contains("timed out") {
        return "connect timed out".into();
    }
    last
}
