//! One gRPC channel per node, opened lazily on first use and reused by every request to that
//! node (a channel multiplexes concurrent calls over one HTTP/2 connection and reconnects by
//! itself), so a partition-aware client talking to every node holds one connection each.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use dynamo_api::contract::{self, MAX_MESSAGE_BYTES};
use dynamo_api::pb::admin::admin_client::AdminClient;
use dynamo_api::pb::client::client_client::ClientClient;
use tonic::transport::Channel;

use crate::ClientError;

/// The client and admin APIs of one node, over one channel. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Conn {
    pub(crate) client: ClientClient<Channel>,
    pub(crate) admin: AdminClient<Channel>,
}

/// See the module docs.
pub(crate) struct Pool {
    /// Per-call timeout of every channel.
    timeout: Duration,
    /// HOST:PORT -> its connection.
    conns: Mutex<HashMap<String, Conn>>,
}

impl Pool {
    pub(crate) fn new(timeout: Duration) -> Pool {
        Pool { timeout, conns: Mutex::new(HashMap::new()) }
    }

    /// The connection to `address`, opened (lazily: no I/O here) if there is none yet. Fails
    /// only for an address that is not HOST:PORT.
    pub(crate) fn get(&self, address: &str) -> Result<Conn, ClientError> {
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(conn) = conns.get(address) {
            return Ok(conn.clone());
        }
        let channel = contract::channel(address, self.timeout)
            .map_err(|cause| ClientError::Connect { endpoint: address.into(), cause })?;
        let conn = Conn {
            client: ClientClient::new(channel.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            admin: AdminClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES),
        };
        conns.insert(address.to_string(), conn.clone());
        Ok(conn)
    }

    /// Closes the connections to addresses for which `keep` is false (nodes that left).
    pub(crate) fn retain(&self, keep: impl Fn(&str) -> bool) {
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        conns.retain(|address, _| keep(address));
    }

    /// How many connections are open (tests).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.conns.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}
