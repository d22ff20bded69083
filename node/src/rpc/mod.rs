//! gRPC: the generated protobuf types, the three services this node serves (client,
//! internode, admin), who may call them (`auth`), the internode client implementing the `net`
//! traits, the test-only fault injection around both, and the one place where errors become
//! `tonic::Status`.

pub mod admission;
pub mod auth;
pub mod backup;
pub mod faults;
pub mod gate;
pub mod peers;
pub mod service;
pub mod status;

pub use dynamo_api::contract::MAX_MESSAGE_BYTES;
/// Generated protobuf and tonic code (in `dynamo-api`).
pub use dynamo_api::pb;
