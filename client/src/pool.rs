//! One gRPC channel per node, opened lazily on first use and reused by every request to that
//! node (a channel multiplexes concurrent calls over one HTTP/2 connection and reconnects by
//! itself), so a partition-aware client talking to every node holds one connection each.
//! Every channel speaks TLS with the client's [`Credentials`] (plaintext only for credentials
//! without a CA), and every call carries the client's bearer token, if it has one.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use dynamo_api::contract::{self, MAX_MESSAGE_BYTES};
use dynamo_api::pb::admin::admin_client::AdminClient;
use dynamo_api::pb::client::client_client::ClientClient;
use dynamo_api::security::Credentials;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::ClientError;

/// A channel whose calls carry the client's bearer token.
pub(crate) type Transport = InterceptedService<Channel, Bearer>;

/// Adds `authorization: Bearer <token>` to every call (nothing without a token).
#[derive(Clone)]
pub(crate) struct Bearer(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert(contract::AUTHORIZATION_KEY, value.clone());
        }
        Ok(request)
    }
}

/// A lazily connected channel to `address` (HOST:PORT) with `credentials` (TLS unless they
/// have no CA) and the connection settings every caller of a node uses
/// ([`contract::channel`]). No I/O: it connects on first use. The token is not added here:
/// the client's calls carry it through an interceptor, raw gRPC calls with
/// [`Credentials::authorize`].
pub fn channel(
    address: &str,
    timeout: Duration,
    credentials: &Credentials,
) -> Result<Channel, ClientError> {
    contract::channel(address, timeout, credentials)
        .map_err(|cause| ClientError::Connect { endpoint: address.to_string(), cause })
}

/// The settings shared by every channel of one client.
#[derive(Clone)]
pub(crate) struct Dialer {
    /// Per-call timeout.
    timeout: Duration,
    credentials: Credentials,
    /// The token as call metadata, parsed once.
    bearer: Bearer,
}

impl Dialer {
    /// Fails for a token that cannot be sent as a header value.
    pub(crate) fn new(timeout: Duration, credentials: Credentials) -> Result<Dialer, ClientError> {
        let bearer = match &credentials.token {
            Some(_) => Bearer(Some(credentials.bearer().ok_or_else(|| {
                ClientError::Settings(
                    "the token holds characters a header cannot carry (spaces, control \
                     characters): pass the token exactly as `dynamoctl token create` printed it"
                        .into(),
                )
            })?)),
            None => Bearer(None),
        };
        Ok(Dialer { timeout, credentials, bearer })
    }

    fn transport(&self, address: &str) -> Result<Transport, ClientError> {
        Ok(InterceptedService::new(
            channel(address, self.timeout, &self.credentials)?,
            self.bearer.clone(),
        ))
    }

    /// The client API of the node at `address`.
    pub(crate) fn client(&self, address: &str) -> Result<ClientClient<Transport>, ClientError> {
        Ok(ClientClient::new(self.transport(address)?)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
    }

    /// The admin API at `address` (a node's peer port).
    pub(crate) fn admin(&self, address: &str) -> Result<AdminClient<Transport>, ClientError> {
        Ok(AdminClient::new(self.transport(address)?).max_decoding_message_size(MAX_MESSAGE_BYTES))
    }
}

/// See the module docs.
pub(crate) struct Pool {
    dialer: Dialer,
    /// HOST:PORT (client port) -> its connection.
    conns: Mutex<HashMap<String, ClientClient<Transport>>>,
}

impl Pool {
    pub(crate) fn new(dialer: Dialer) -> Pool {
        Pool { dialer, conns: Mutex::new(HashMap::new()) }
    }

    /// The connection to `address`, opened (lazily: no I/O here) if there is none yet. Fails
    /// only for an address that is not HOST:PORT.
    pub(crate) fn get(&self, address: &str) -> Result<ClientClient<Transport>, ClientError> {
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(conn) = conns.get(address) {
            return Ok(conn.clone());
        }
        let conn = self.dialer.client(address)?;
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
