//! The contract every Dynamo program shares, and nothing else: the gRPC APIs (`pb`, generated
//! from `proto/`), the node's fixed names (`contract`: port, health services, environment
//! variables, metadata keys), the `node.toml` schema and its validation (`config`), and the ring
//! (`ring`: partitions, preference lists, placement during layout changes), which the node and
//! the partition-aware client must compute identically.
//!
//! It builds no storage engine: the operator and the client library depend on it without
//! compiling RocksDB.

pub mod config;
pub mod contract;
pub mod ring;
pub mod security;

/// Generated protobuf and tonic code (from `proto/`), clients and servers.
pub mod pb {
    /// The client API: get, put, delete.
    pub mod client {
        tonic::include_proto!("dynamo.client.v1");
    }
    /// Node-to-node calls: replication, fetch, gossip, hints, Merkle trees, transfers.
    pub mod internode {
        tonic::include_proto!("dynamo.internode.v1");
    }
    /// Operations: status, ring, decommission, repair, fault injection (tests).
    pub mod admin {
        tonic::include_proto!("dynamo.admin.v1");
    }
}
