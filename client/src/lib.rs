//! The Rust client library for Dynamo: get, put, delete and the admin calls, with errors a user
//! can act on and plain Rust types (no generated protobuf types in its API). It does not build
//! a storage engine: an application depends on this crate alone.
//!
//! ```no_run
//! # async fn demo() -> Result<(), dynamo_client::ClientError> {
//! use std::time::Duration;
//! use dynamo_client::Client;
//!
//! let client = Client::new("127.0.0.1:7070", Duration::from_secs(5))?;
//! // A blind write: without a context it becomes a sibling of whatever the key holds.
//! client.put(b"cart:42", b"{\"items\":[1]}".to_vec(), Vec::new(), None).await?;
//! // Read every concurrent value and one context covering them...
//! let got = client.get(b"cart:42", None).await?;
//! // ...resolve the siblings in the application, then write the result with that context:
//! // it supersedes exactly what this get saw.
//! let merged = got.values.concat();
//! client.put(b"cart:42", merged, got.context, None).await?;
//! # Ok(()) }
//! ```

pub mod routing;
mod types;

use std::future::Future;
use std::time::Duration;

use dynamo_api::contract::{self, MAX_MESSAGE_BYTES};
use dynamo_api::pb::admin::{
    admin_client::AdminClient, DecommissionRequest, RepairRequest, RingRequest, StatusRequest,
};
use dynamo_api::pb::client::{client_client::ClientClient, DeleteRequest, GetRequest, PutRequest};
use tonic::transport::Channel;
use tonic::{Code, Status};

pub use routing::Router;
pub use types::{
    ClusterStatus, Decommissioned, Hints, MemberState, NodeInfo, RepairReport, RingLayout,
    RingMember, Transfer, TransferState, Versions, Written,
};

/// Why a client call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// Nothing answered at the endpoint.
    #[error(
        "cannot reach a dynamo node at {endpoint}: {cause}; check --endpoint (or DYNAMO_ENDPOINT) \
         and that the node is running"
    )]
    Connect { endpoint: String, cause: String },
    /// The node answered with an error; its message says what to do.
    #[error("{message}")]
    Node { code: Code, message: String },
    /// The call did not complete in time.
    #[error("no answer from {endpoint} within {timeout_ms} ms")]
    Timeout { endpoint: String, timeout_ms: u64 },
}

/// A connection to one node. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    endpoint: String,
    timeout: Duration,
    client: ClientClient<Channel>,
    admin: AdminClient<Channel>,
}

impl Client {
    /// Prepares a client for `endpoint` (HOST:PORT); connects on first use.
    pub fn new(endpoint: &str, timeout: Duration) -> Result<Client, ClientError> {
        let channel = contract::channel(endpoint, timeout)
            .map_err(|cause| ClientError::Connect { endpoint: endpoint.into(), cause })?;
        Ok(Client {
            endpoint: endpoint.to_string(),
            timeout,
            client: ClientClient::new(channel.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            admin: AdminClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES),
        })
    }

    /// The node this client talks to (HOST:PORT).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Classifies a failed call: the node's own error, a timeout, or no connection.
    fn error(&self, status: Status) -> ClientError {
        if contract::is_node_error(&status) {
            return ClientError::Node { code: status.code(), message: status.message().into() };
        }
        match status.code() {
            Code::DeadlineExceeded | Code::Cancelled => ClientError::Timeout {
                endpoint: self.endpoint.clone(),
                timeout_ms: self.timeout.as_millis() as u64,
            },
            Code::Unavailable | Code::Unknown | Code::Internal => ClientError::Connect {
                endpoint: self.endpoint.clone(),
                cause: contract::transport_cause(&status),
            },
            code => ClientError::Node { code, message: status.message().into() },
        }
    }

    /// The envelope of every call: run it, unwrap the response, convert it to the client's
    /// type, classify a failure.
    async fn call<R, T: From<R>>(
        &self,
        call: impl Future<Output = Result<tonic::Response<R>, Status>>,
    ) -> Result<T, ClientError> {
        call.await.map(|r| T::from(r.into_inner())).map_err(|s| self.error(s))
    }

    /// Every live value of `key` and the context to write it back with; `r` overrides the
    /// cluster's read quorum for this request.
    pub async fn get(&self, key: &[u8], r: Option<u32>) -> Result<Versions, ClientError> {
        let mut c = self.client.clone();
        self.call(c.get(GetRequest { key: key.to_vec(), r })).await
    }

    /// Writes `value`, superseding what `context` covers (empty context: a new sibling); `w`
    /// overrides the cluster's write quorum for this request.
    pub async fn put(
        &self,
        key: &[u8],
        value: Vec<u8>,
        context: Vec<u8>,
        w: Option<u32>,
    ) -> Result<Written, ClientError> {
        let mut c = self.client.clone();
        self.call(c.put(PutRequest { key: key.to_vec(), value, context, w })).await
    }

    /// Deletes what `context` covers (writes a tombstone).
    pub async fn delete(
        &self,
        key: &[u8],
        context: Vec<u8>,
        w: Option<u32>,
    ) -> Result<Written, ClientError> {
        let mut c = self.client.clone();
        self.call(c.delete(DeleteRequest { key: key.to_vec(), context, w })).await
    }

    /// The node's view of the cluster.
    pub async fn status(&self) -> Result<ClusterStatus, ClientError> {
        let mut c = self.admin.clone();
        self.call(c.status(StatusRequest {})).await
    }

    /// Starts decommissioning `node` (empty: the endpoint node); with `force`, removes it even
    /// if it does not answer.
    pub async fn decommission(
        &self,
        node: &str,
        force: bool,
    ) -> Result<Decommissioned, ClientError> {
        let mut c = self.admin.clone();
        self.call(c.decommission(DecommissionRequest { node_id: node.to_string(), force })).await
    }

    /// Runs anti-entropy now on the node (one partition or all it replicates).
    pub async fn repair(&self, partition: Option<u32>) -> Result<RepairReport, ClientError> {
        let mut c = self.admin.clone();
        self.call(c.repair(RepairRequest { partition })).await
    }

    /// The partition layout.
    pub async fn ring(&self) -> Result<RingLayout, ClientError> {
        let mut c = self.admin.clone();
        self.call(c.ring(RingRequest {})).await
    }

    /// Polls until `node` reports `left` (every partition handed off), calling `progress` with
    /// each status seen; fails after `limit`.
    pub async fn wait_until_left(
        &self,
        node: &str,
        limit: Duration,
        mut progress: impl FnMut(&ClusterStatus),
    ) -> Result<(), ClientError> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let status = self.status().await?;
            if status.membership_of(node) == Some(MemberState::Left) {
                return Ok(());
            }
            progress(&status);
            if tokio::time::Instant::now() > deadline {
                let state = status.membership_of(node).map_or("absent", MemberState::as_str);
                return Err(ClientError::Timeout {
                    endpoint: format!(
                        "{} (waiting for {node} to leave; it is {state})",
                        self.endpoint
                    ),
                    timeout_ms: limit.as_millis() as u64,
                });
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}
