//! The Rust client library (used by `dynamoctl`): get, put, delete and the admin calls against
//! one node endpoint, with errors a user can act on.

use std::time::Duration;

use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::rpc::pb::admin::{
    admin_client::AdminClient, DecommissionRequest, DecommissionResponse, RepairRequest,
    RepairResponse, RingRequest, RingResponse, StatusRequest, StatusResponse,
};
use crate::rpc::pb::client::{
    client_client::ClientClient, DeleteRequest, GetRequest, GetResponse, PutRequest, PutResponse,
};
use crate::rpc::{peers, MAX_MESSAGE_BYTES};

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
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
        let channel = peers::channel(endpoint, timeout)
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

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn error(&self, status: Status) -> ClientError {
        if crate::rpc::status::is_node_error(&status) {
            return ClientError::Node {
                code: status.code(),
                message: status.message().to_string(),
            };
        }
        match peers::peer_error(status) {
            crate::coordinator::PeerError::Timeout => ClientError::Timeout {
                endpoint: self.endpoint.clone(),
                timeout_ms: self.timeout.as_millis() as u64,
            },
            crate::coordinator::PeerError::Unreachable(cause) => {
                ClientError::Connect { endpoint: self.endpoint.clone(), cause }
            }
            crate::coordinator::PeerError::Remote { code, message } => {
                ClientError::Node { code: Code::from_i32(code), message }
            }
        }
    }

    /// Every live value of `key` and the context to write it back with.
    pub async fn get(&self, key: &[u8], r: Option<u32>) -> Result<GetResponse, ClientError> {
        let mut c = self.client.clone();
        c.get(GetRequest { key: key.to_vec(), r })
            .await
            .map(|r| r.into_inner())
            .map_err(|s| self.error(s))
    }

    /// Writes `value`, superseding what `context` covers (empty context: a new sibling).
    pub async fn put(
        &self,
        key: &[u8],
        value: Vec<u8>,
        context: Vec<u8>,
        w: Option<u32>,
    ) -> Result<PutResponse, ClientError> {
        let mut c = self.client.clone();
        c.put(PutRequest { key: key.to_vec(), value, context, w })
            .await
            .map(|r| r.into_inner())
            .map_err(|s| self.error(s))
    }

    /// Deletes what `context` covers.
    pub async fn delete(
        &self,
        key: &[u8],
        context: Vec<u8>,
        w: Option<u32>,
    ) -> Result<PutResponse, ClientError> {
        let mut c = self.client.clone();
        c.delete(DeleteRequest { key: key.to_vec(), context, w })
            .await
            .map(|r| r.into_inner())
            .map_err(|s| self.error(s))
    }

    /// The node's view of the cluster.
    pub async fn status(&self) -> Result<StatusResponse, ClientError> {
        let mut c = self.admin.clone();
        c.status(StatusRequest {}).await.map(|r| r.into_inner()).map_err(|s| self.error(s))
    }

    /// Starts decommissioning `node` (empty: the endpoint node); with `force`, removes it even
    /// if it does not answer.
    pub async fn decommission(
        &self,
        node: &str,
        force: bool,
    ) -> Result<DecommissionResponse, ClientError> {
        let mut c = self.admin.clone();
        c.decommission(DecommissionRequest { node_id: node.to_string(), force })
            .await
            .map(|r| r.into_inner())
            .map_err(|s| self.error(s))
    }

    /// Runs anti-entropy now on the node (one partition or all it replicates).
    pub async fn repair(&self, partition: Option<u32>) -> Result<RepairResponse, ClientError> {
        let mut c = self.admin.clone();
        c.repair(RepairRequest { partition })
            .await
            .map(|r| r.into_inner())
            .map_err(|s| self.error(s))
    }

    /// The partition layout.
    pub async fn ring(&self) -> Result<RingResponse, ClientError> {
        let mut c = self.admin.clone();
        c.ring(RingRequest {}).await.map(|r| r.into_inner()).map_err(|s| self.error(s))
    }
}
