//! gRPC: the generated protobuf types, the three services this node serves (client,
//! internode, admin), the internode client used as the coordinator's transport, and the one
//! place where errors become `tonic::Status`.

pub mod peers;
pub mod service;
pub mod status;

/// Generated protobuf and tonic code (from `proto/`).
pub mod pb {
    pub mod client {
        tonic::include_proto!("dynamo.client.v1");
    }
    pub mod internode {
        tonic::include_proto!("dynamo.internode.v1");
    }
    pub mod admin {
        tonic::include_proto!("dynamo.admin.v1");
    }
}

/// Largest gRPC message accepted or sent: a whole object (every sibling) plus headroom.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;
