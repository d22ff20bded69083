//! What went wrong with a call, for the user ([`ClientError`]), and, for the client's own retry
//! rule, whether the request can have reached a node at all ([`Failure`]): only a request that
//! nothing received, or that a node answered it did nothing with, is sent to another node.

use std::time::Duration;

use dynamo_api::contract;
use tonic::{Code, Status};

/// Why a client call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// Nothing answered at the endpoint.
    #[error(
        "cannot reach a dynamo node at {endpoint}: {cause}; check that the node is running and \
         that this address is reachable from here (dynamoctl: --endpoint or DYNAMO_ENDPOINT)"
    )]
    Connect { endpoint: String, cause: String },
    /// The node answered with an error; its message says what to do. `code` is the gRPC status
    /// code (e.g. `InvalidArgument` for bad input, `Unavailable` for a missed quorum).
    #[error("{message}")]
    Node { code: Code, message: String },
    /// The call did not complete in time.
    #[error("no answer from {endpoint} within {timeout_ms} ms")]
    Timeout { endpoint: String, timeout_ms: u64 },
    /// A request went to several nodes (a partition-aware client, or several endpoints) and
    /// none of them took it. `errors` has one entry per node tried. For a put or delete,
    /// nothing was written: a write goes to another node only when nothing reached the last
    /// one, or it answered that it did nothing.
    #[error(
        "none of the {} nodes tried could take the request: {}; check that the nodes are \
         running and reachable from this client",
        .errors.len(),
        .errors.join("; ")
    )]
    Exhausted { errors: Vec<String> },
    /// A node sent a ring that does not hold together; the client keeps routing with the ring
    /// it had.
    #[error(
        "the ring {endpoint} sent is not valid ({cause}); the client keeps routing with the ring \
         it had: check that the node runs the same dynamo version as the client"
    )]
    InvalidRing { endpoint: String, cause: String },
    /// A node did not leave within the time waited for it (its partitions are still moving,
    /// or it is not decommissioning).
    #[error(
        "{node} has not left after {waited_s} s; it is {state}: `dynamoctl status` shows the \
         transfers still under way; wait longer, or, if the node crashed and cannot hand its \
         data off, remove it with `dynamoctl decommission {node} --force`"
    )]
    StillMember { node: String, state: &'static str, waited_s: u64 },
    /// The client was built without an endpoint.
    #[error("no endpoint given: pass at least one node address (HOST:PORT)")]
    NoEndpoint,
    /// The node wants a credential and got none it accepts (`UNAUTHENTICATED`). Never sent to
    /// another node: they all check the same way.
    #[error(
        "{endpoint} refused the call: {message}; give a credential of this cluster: a bearer \
         token (dynamoctl: --token or DYNAMO_TOKEN) or a client certificate issued by its CA \
         (--cert and --key, or DYNAMO_CERT and DYNAMO_KEY)"
    )]
    Unauthenticated { endpoint: String, message: String },
    /// The credential's role does not allow the call (`PERMISSION_DENIED`), e.g. a read token
    /// on a put, or a client token on an admin call. Nothing was done; never retried.
    #[error(
        "{endpoint} refused the call: {message}; use a credential with the role the call needs \
         (read for get and ring, readwrite for put and delete, admin for status, decommission, \
         repair: `dynamoctl token create --role ...` makes one)"
    )]
    PermissionDenied { endpoint: String, message: String },
    /// An admin call went to a port that does not serve the admin API (a node's client port).
    #[error(
        "{endpoint} does not serve the admin API: admin calls go to a node's peer port (7071 by \
         default), not its client port: pass --admin-addr or DYNAMO_ADMIN_ADDR \
         (ClientBuilder::admin_endpoint)"
    )]
    NotAdminPort { endpoint: String },
    /// The TLS handshake failed: the node's certificate is not from the CA given, it does not
    /// name the address dialled, or one side speaks plaintext.
    #[error(
        "TLS with {endpoint} failed: {cause}; check that --ca-cert (DYNAMO_CA_CERT) is this \
         cluster's CA certificate, that the node's certificate names the address dialled, and \
         that a client certificate (--cert/--key) comes from the same CA; a `--dev --insecure` \
         node speaks plaintext: pass --insecure"
    )]
    Tls { endpoint: String, cause: String },
    /// The client's own settings are unusable (a credential that cannot be loaded).
    #[error("{0}")]
    Settings(String),
}

impl ClientError {
    /// Whether a node refused the call for want of a credential or a role: the caller must
    /// change its credentials, retrying cannot help.
    pub fn is_auth(&self) -> bool {
        matches!(self, ClientError::Unauthenticated { .. } | ClientError::PermissionDenied { .. })
    }

    /// The gRPC status code a node answered with, if the failure is a node's answer.
    pub fn code(&self) -> Option<Code> {
        match self {
            ClientError::Node { code, .. } => Some(*code),
            ClientError::Unauthenticated { .. } => Some(Code::Unauthenticated),
            ClientError::PermissionDenied { .. } => Some(Code::PermissionDenied),
            ClientError::NotAdminPort { .. } => Some(Code::Unimplemented),
            _ => None,
        }
    }
}

/// Whether a transport failure's cause is a TLS problem (a certificate not trusted, an alert
/// from the peer, plaintext met by TLS), by rustls' wording.
fn is_tls_cause(cause: &str) -> bool {
    let cause = cause.to_ascii_lowercase();
    ["certificate", "tls", "alert", "corrupt message", "handshake"]
        .iter()
        .any(|w| cause.contains(w))
}

/// Whether a request that failed may be sent to another node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// No connection to the node could be made: nothing reached it.
    Unreached,
    /// The node answered that it did nothing (it is not ready).
    Declined,
    /// The node refused the request unread because it was overloaded: nothing was done; sent
    /// again after a jittered backoff.
    Overloaded,
    /// The connection broke after the request was sent: a write may have been applied.
    Interrupted,
    /// The node's own answer, or no answer in time: final.
    Final,
}

/// What a request does, for the retry rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    /// A get: repeating it changes nothing.
    Read,
    /// A put or delete: repeating one that may have been applied would write a second
    /// version, a sibling of the first (a blind write is not idempotent).
    Write,
}

/// A failed call: what the user is told, and whether it may be retried elsewhere.
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    pub(crate) error: ClientError,
    pub(crate) delivery: Delivery,
}

impl Failure {
    /// Classifies a failed call to `endpoint`: the node's own error, a timeout, or no
    /// connection (and how far the request got).
    pub(crate) fn of(status: &Status, endpoint: &str, timeout: Duration) -> Failure {
        // Credentials first: whichever layer refused, every node would refuse the same way.
        let refused = |make: fn(String, String) -> ClientError| Failure {
            error: make(endpoint.to_string(), status.message().to_string()),
            delivery: Delivery::Final,
        };
        match status.code() {
            Code::Unauthenticated => {
                return refused(|endpoint, message| ClientError::Unauthenticated {
                    endpoint,
                    message,
                })
            }
            Code::PermissionDenied => {
                return refused(|endpoint, message| ClientError::PermissionDenied {
                    endpoint,
                    message,
                })
            }
            _ => {}
        }
        if contract::is_node_error(status) {
            let kind =
                status.metadata().get(contract::ERROR_KIND_KEY).and_then(|v| v.to_str().ok());
            // "not-ready": the node has no ring yet, or the rings disagree while a layout
            // change propagates; nothing was written. ("unavailable" is not such an answer: a
            // forwarded write may have timed out after it was applied.)
            // "overloaded": the node's admission limit refused the call before it was read.
            let delivery = match kind {
                Some("not-ready") => Delivery::Declined,
                Some("overloaded") => Delivery::Overloaded,
                _ => Delivery::Final,
            };
            let error = ClientError::Node { code: status.code(), message: status.message().into() };
            return Failure { error, delivery };
        }
        let timed_out = || ClientError::Timeout {
            endpoint: endpoint.to_string(),
            timeout_ms: timeout.as_millis() as u64,
        };
        let connect = || ClientError::Connect {
            endpoint: endpoint.to_string(),
            cause: contract::transport_cause(status),
        };
        match status.code() {
            Code::DeadlineExceeded | Code::Cancelled => {
                Failure { error: timed_out(), delivery: Delivery::Final }
            }
            _ if contract::never_connected(status) => {
                let cause = contract::transport_cause(status);
                let error = if is_tls_cause(&cause) {
                    ClientError::Tls { endpoint: endpoint.to_string(), cause }
                } else {
                    connect()
                };
                Failure { error, delivery: Delivery::Unreached }
            }
            Code::Unavailable | Code::Unknown | Code::Internal => {
                Failure { error: connect(), delivery: Delivery::Interrupted }
            }
            code => Failure {
                error: ClientError::Node { code, message: status.message().into() },
                delivery: Delivery::Final,
            },
        }
    }

    /// Whether the request may go to the next node.
    pub(crate) fn may_retry(&self, op: Op) -> bool {
        match self.delivery {
            Delivery::Unreached | Delivery::Declined | Delivery::Overloaded => true,
            Delivery::Interrupted => op == Op::Read,
            Delivery::Final => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node_error(code: Code, kind: &str) -> Status {
        let mut s = Status::new(code, "m");
        s.metadata_mut().insert(contract::ERROR_KIND_KEY, kind.parse().unwrap());
        s
    }

    #[test]
    fn only_what_nothing_wrote_is_retried_elsewhere() {
        let t = Duration::from_secs(1);
        let not_ready = Failure::of(&node_error(Code::Unavailable, "not-ready"), "a:1", t);
        assert!(not_ready.may_retry(Op::Write));
        let forwarded = Failure::of(&node_error(Code::Unavailable, "unavailable"), "a:1", t);
        assert!(!forwarded.may_retry(Op::Write), "a forwarded write may have timed out");
        let quorum = Failure::of(&node_error(Code::Unavailable, "quorum"), "a:1", t);
        assert!(!quorum.may_retry(Op::Write) && !quorum.may_retry(Op::Read));
        assert!(matches!(quorum.error, ClientError::Node { code: Code::Unavailable, .. }));
        let overloaded = Failure::of(&node_error(Code::ResourceExhausted, "overloaded"), "a:1", t);
        assert_eq!(overloaded.delivery, Delivery::Overloaded);
        assert!(overloaded.may_retry(Op::Write) && overloaded.may_retry(Op::Read));
        assert_eq!(overloaded.error.code(), Some(Code::ResourceExhausted));
        // A refused hint is a node's final answer: the write may have reached replicas.
        let hint = Failure::of(&node_error(Code::ResourceExhausted, "hint-refused"), "a:1", t);
        assert!(!hint.may_retry(Op::Write));
        let timeout = Failure::of(&Status::cancelled("timeout expired"), "a:1", t);
        assert!(!timeout.may_retry(Op::Read));
        assert!(timeout.error.to_string().contains("within 1000 ms"), "{}", timeout.error);
        // A transport failure without a connect error: the request may have been received.
        let broken = Failure::of(&Status::unavailable("connection reset"), "a:1", t);
        assert_eq!(broken.delivery, Delivery::Interrupted);
        assert!(broken.may_retry(Op::Read) && !broken.may_retry(Op::Write));
    }

    #[test]
    fn refusals_for_credentials_are_their_own_errors_and_final() {
        let t = Duration::from_secs(1);
        let no_credential = Failure::of(
            &Status::unauthenticated("the client API needs a client certificate or a token"),
            "a:1",
            t,
        );
        assert!(!no_credential.may_retry(Op::Read) && !no_credential.may_retry(Op::Write));
        assert!(no_credential.error.is_auth());
        let message = no_credential.error.to_string();
        assert!(message.contains("a:1 refused the call: the client API needs"), "{message}");
        assert!(message.contains("--token") && message.contains("--cert"), "{message}");
        // The same code with the node's error kind set: still the credential error.
        let mut denied =
            Status::permission_denied("put needs the readwrite role; this token has read");
        denied
            .metadata_mut()
            .insert(contract::ERROR_KIND_KEY, "permission-denied".parse().unwrap());
        let denied = Failure::of(&denied, "a:1", t);
        assert!(!denied.may_retry(Op::Read));
        assert!(matches!(denied.error, ClientError::PermissionDenied { .. }));
        assert_eq!(denied.error.code(), Some(Code::PermissionDenied));
        assert!(denied.error.to_string().contains("needs the readwrite role"), "{}", denied.error);
    }

    #[test]
    fn tls_causes_are_recognised() {
        assert!(is_tls_cause("invalid peer certificate: UnknownIssuer"));
        assert!(is_tls_cause("received fatal alert: BadCertificate"));
        assert!(is_tls_cause("received corrupt message of type InvalidContentType"));
        assert!(!is_tls_cause("Connection refused (os error 111)"));
    }

    #[tokio::test]
    async fn a_refused_connection_counts_as_unreached() {
        // A port nothing listens on: bind one, then free it.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        drop(listener);
        let channel = contract::channel(
            &address,
            Duration::from_secs(2),
            &dynamo_api::security::Credentials::insecure(),
        )
        .unwrap();
        let mut client = dynamo_api::pb::client::client_client::ClientClient::new(channel);
        let status = client.get(dynamo_api::pb::client::GetRequest::default()).await.unwrap_err();
        let failure = Failure::of(&status, &address, Duration::from_secs(2));
        assert_eq!(failure.delivery, Delivery::Unreached, "{status:?}");
        assert!(failure.may_retry(Op::Write));
        let message = failure.error.to_string();
        assert!(message.contains(&format!("cannot reach a dynamo node at {address}")), "{message}");
    }
}
