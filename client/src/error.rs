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
}

/// Whether a request that failed may be sent to another node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// No connection to the node could be made: nothing reached it.
    Unreached,
    /// The node answered that it did nothing (it is not ready).
    Declined,
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
        if contract::is_node_error(status) {
            let kind =
                status.metadata().get(contract::ERROR_KIND_KEY).and_then(|v| v.to_str().ok());
            // "not-ready": the node has no ring yet, or the rings disagree while a layout
            // change propagates; nothing was written. ("unavailable" is not such an answer: a
            // forwarded write may have timed out after it was applied.)
            let delivery = match kind {
                Some("not-ready") => Delivery::Declined,
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
                Failure { error: connect(), delivery: Delivery::Unreached }
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
            Delivery::Unreached | Delivery::Declined => true,
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
        let timeout = Failure::of(&Status::cancelled("timeout expired"), "a:1", t);
        assert!(!timeout.may_retry(Op::Read));
        assert!(timeout.error.to_string().contains("within 1000 ms"), "{}", timeout.error);
        // A transport failure without a connect error: the request may have been received.
        let broken = Failure::of(&Status::unavailable("connection reset"), "a:1", t);
        assert_eq!(broken.delivery, Delivery::Interrupted);
        assert!(broken.may_retry(Op::Read) && !broken.may_retry(Op::Write));
    }

    #[tokio::test]
    async fn a_refused_connection_counts_as_unreached() {
        // A port nothing listens on: bind one, then free it.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        drop(listener);
        let channel = contract::channel(&address, Duration::from_secs(2)).unwrap();
        let mut client = dynamo_api::pb::client::client_client::ClientClient::new(channel);
        let status = client.get(dynamo_api::pb::client::GetRequest::default()).await.unwrap_err();
        let failure = Failure::of(&status, &address, Duration::from_secs(2));
        assert_eq!(failure.delivery, Delivery::Unreached, "{status:?}");
        assert!(failure.may_retry(Op::Write));
        let message = failure.error.to_string();
        assert!(message.contains(&format!("cannot reach a dynamo node at {address}")), "{message}");
    }
}
