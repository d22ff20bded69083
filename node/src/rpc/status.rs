//! The one place that maps [`Error`] to `tonic::Status`. Every status the node produces carries
//! the `dynamo-error` metadata key, so a caller can tell a node's own answer from a transport
//! failure that happened to use the same gRPC code.

use tonic::{Code, Status};

use crate::error::Error;

pub use dynamo_api::contract::{is_node_error, ERROR_KIND_KEY};

fn kind_and_code(e: &Error) -> (&'static str, Code) {
    match e {
        Error::Unauthenticated(_) => ("unauthenticated", Code::Unauthenticated),
        Error::PermissionDenied(_) => ("permission-denied", Code::PermissionDenied),
        Error::HintRefused(_) => ("hint-refused", Code::ResourceExhausted),
        Error::Overloaded(_) => ("overloaded", Code::ResourceExhausted),
        Error::InvalidArgument(_) => ("invalid-argument", Code::InvalidArgument),
        Error::Backup(_) => ("backup", Code::Unavailable),
        Error::Context(_) => ("invalid-context", Code::InvalidArgument),
        Error::Quorum { .. } => ("quorum", Code::Unavailable),
        Error::Unavailable { .. } => ("unavailable", Code::Unavailable),
        Error::NotReady(_) => ("not-ready", Code::Unavailable),
        Error::TooManySiblings { .. } => ("too-many-siblings", Code::FailedPrecondition),
        Error::ObjectTooLarge { .. } => ("object-too-large", Code::FailedPrecondition),
        Error::Remote { code, .. } => ("remote", Code::from_i32(*code)),
        Error::Corrupt(_) => ("corrupt", Code::DataLoss),
        Error::Storage(_) => ("storage", Code::Internal),
        Error::Internal(_) => ("internal", Code::Internal),
    }
}

/// The error's kind: the `dynamo-error` value, and the outcome label of request metrics.
pub fn kind(e: &Error) -> &'static str {
    kind_and_code(e).0
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        let (kind, code) = kind_and_code(&e);
        let mut status = Status::new(code, e.to_string());
        status.metadata_mut().insert(ERROR_KIND_KEY, kind.parse().expect("ascii error kind"));
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Op;

    #[test]
    fn errors_map_to_codes_and_carry_the_marker() {
        let s: Status = Error::InvalidArgument("bad".into()).into();
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(is_node_error(&s));
        let s: Status = Error::Quorum {
            op: Op::Put,
            required: 2,
            ok: 1,
            tried: 3,
            timeout_ms: 10,
            errors: vec![],
        }
        .into();
        assert_eq!(s.code(), Code::Unavailable);
        assert!(s.message().contains("1 of the 2 required"));
        let s: Status =
            Error::Remote { code: Code::FailedPrecondition as i32, message: "m".into() }.into();
        assert_eq!((s.code(), s.message()), (Code::FailedPrecondition, "m"));
        assert!(!is_node_error(&Status::unavailable("tcp connect error")));
    }
}
