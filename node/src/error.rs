//! The node's one error type. Every message says what happened and what the caller can do;
//! `rpc::status` is the one place that turns these into gRPC statuses.

use crate::version::{ContextError, VersionError};

/// Which client operation failed to reach its quorum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Get,
    Put,
    Delete,
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Op::Get => "get",
            Op::Put => "put",
            Op::Delete => "delete",
        })
    }
}

/// Errors a request can end with. Variants document whether anything was written.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The call carried no usable credential; nothing was done.
    #[error("{0}")]
    Unauthenticated(String),

    /// The caller's credential does not allow this call; nothing was done.
    #[error("{0}")]
    PermissionDenied(String),

    /// A hint was not kept (its target is no member, has been down past the hint window, or
    /// has too many hints held for it); nothing was written.
    #[error("{0}")]
    HintRefused(String),

    /// The node takes no more requests of this kind right now; nothing was done. Retry with
    /// backoff.
    #[error("{0}")]
    Overloaded(String),

    /// A backup or restore could not read or write its destination, or a member could not
    /// take its part; the message says which and what to check. A backup that failed has no
    /// manifest and is never listed or restored.
    #[error("{0}")]
    Backup(String),

    /// The request itself is wrong; nothing was written.
    #[error("invalid request: {0}")]
    InvalidArgument(String),

    /// The context could not be used; nothing was written.
    #[error("invalid context: {0}")]
    Context(#[from] ContextError),

    /// Too few replicas answered in time. For a put or delete the new version may still be on
    /// the replicas that acknowledged (it is not rolled back), exactly as in Dynamo.
    #[error(
        "{op} failed: {ok} of the {required} required replicas answered within {timeout_ms} ms \
         ({tried} tried{}). {}",
        fmt_errors(.errors),
        quorum_advice(*.op)
    )]
    Quorum {
        op: Op,
        required: usize,
        ok: usize,
        tried: usize,
        timeout_ms: u64,
        errors: Vec<String>,
    },

    /// None of the nodes that may coordinate this write could be reached; nothing was written.
    #[error(
        "no replica of this key could coordinate the {op}: {}; check that those nodes are \
         running and reachable, then retry",
        .errors.join("; ")
    )]
    Unavailable { op: Op, errors: Vec<String> },

    /// The write would leave more concurrent values than allowed; nothing was written.
    #[error(
        "the key has {siblings} concurrent values, more than the limit of {max}: read it, merge \
         the values and write the result back with the context of that read"
    )]
    TooManySiblings { siblings: usize, max: usize },

    /// The write would make the stored object larger than allowed; nothing was written.
    #[error(
        "the key would hold {bytes} bytes across its concurrent values, more than the limit of \
         {max}: resolve the siblings (read, merge, write back with the context) or store less"
    )]
    ObjectTooLarge { bytes: usize, max: usize },

    /// The node this write was forwarded to answered with an error; `code` is its gRPC code,
    /// and its message is passed on unchanged.
    #[error("{message}")]
    Remote { code: i32, message: String },

    /// The node cannot serve yet (it has not joined a cluster); nothing was written.
    #[error("{0}")]
    NotReady(String),

    /// A stored or received version could not be decoded.
    #[error("corrupt version data: {0}")]
    Corrupt(#[from] VersionError),

    /// The storage engine failed.
    #[error("storage engine error: {0}")]
    Storage(String),

    /// Something that should not happen; a bug.
    #[error("internal error: {0}")]
    Internal(String),
}

fn fmt_errors(errors: &[String]) -> String {
    if errors.is_empty() {
        String::new()
    } else {
        format!(": {}", errors.join("; "))
    }
}

fn quorum_advice(op: Op) -> &'static str {
    match op {
        Op::Get => "Retry when more replicas are up, or read with a lower r",
        Op::Put | Op::Delete => {
            "The write may have reached some replicas; retry it with the same context, or \
             write with a lower w"
        }
    }
}

impl From<crate::ring::NotJoined> for Error {
    fn from(e: crate::ring::NotJoined) -> Error {
        Error::NotReady(e.to_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
